"""Deterministic demo data: SmartGo products with drawn images, and SalesData analytics items.

The same seed and the same days always give the same rows, items and image bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeSerializer

from smartgo_analytics.local.drawings import draw_product_image
from smartgo_analytics.local.photos import corpus_picture
from smartgo_analytics.local.stack import SALES_DATA_TABLE, aws_client
from smartgo_analytics.resources.dynamodb import write_items
from smartgo_analytics.settings import settings

DEFAULT_SEED = 20250115
DEFAULT_SALES_PER_DAY = 200

TENANTS = (("carousel-labs", 0.6), ("northwind-resale", 0.25), ("tokyo-vintage", 0.15))

# category -> (median price, brands from the cheapest to the dearest)
CATEGORIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "Electronics": (320.0, ("Nintendo", "Samsung", "Sony", "Bose", "Apple")),
    "Clothing": (45.0, ("Uniqlo", "Zara", "Levi's", "Patagonia", "Arc'teryx")),
    "Furniture": (180.0, ("IKEA", "Muji", "HAY", "Herman Miller", "Vitra")),
    "Books": (12.0, ("Penguin", "Vintage", "Kodansha", "Suhrkamp", "Gallimard")),
    "Jewelry": (260.0, ("Pandora", "Swarovski", "Mejuri", "Tiffany", "Cartier")),
    "Toys": (30.0, ("Playmobil", "Mattel", "Hasbro", "Bandai", "LEGO")),
    "Sports": (75.0, ("Wilson", "Adidas", "Nike", "Salomon", "Yeti")),
}
CONDITIONS = (("New", 0.15), ("Like New", 0.3), ("Good", 0.35), ("Fair", 0.2))
# The demo's price model, so that prices mean something: a sale's price is its category's median
# x its brand's factor (0.6 for a category's first brand up to 1.4 for its last) x its
# condition's factor x its picture's model factor, with log-normal noise of PRICE_NOISE. The model
# (IMAGE_VARIANTS of them per category and brand) is drawn in the picture — its shape's size,
# rotation and colours — and is in no column: only the picture tells a cheap model from a dear one.
CONDITION_FACTORS = {"New": 1.0, "Like New": 0.85, "Good": 0.7, "Fair": 0.5}
MODEL_FACTORS = (0.7, 1.0, 1.5)
PRICE_NOISE = 0.15
DESCRIPTIONS = (
    "Très bon état, légères traces d'usage",
    "Neuwertig – kaum benutzt, Größe M",
    "中古品・美品です",
    "Como nuevo, con caja original",
    "Great condition — barely used",
    "Café-racer style, ølbrun leather ✓",
)
IMAGE_VARIANTS = 3
OVERSIZED_BYTES = 11 * 1024 * 1024

STORES = tuple(
    (f"S{n:02d}", name, region)
    for n, (name, region) in enumerate(
        [
            ("Dublin Docklands", "IE"),
            ("Cork Centre", "IE"),
            ("Galway Quay", "IE"),
            ("London Soho", "UK"),
            ("Manchester Arndale", "UK"),
            ("Paris Marais", "FR"),
            ("Lyon Presqu'île", "FR"),
            ("Berlin Mitte", "DE"),
            ("München Glockenbach", "DE"),
            ("Amsterdam Jordaan", "NL"),
            ("Tokyo Shimokitazawa", "JP"),
        ],
        start=1,
    )
)
DEMO_PRODUCTS = 25


@dataclass(frozen=True)
class Sale:
    id: str
    tenant_id: str
    category: str
    brand: str
    condition: str
    sold_price: Decimal | None
    sold_date: datetime | None
    image_url: str | None
    description: str
    status: str

    def as_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _weighted(rng: random.Random, choices: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _day_rng(seed: int, day: date, stream: str) -> random.Random:
    return random.Random(f"{seed}:{stream}:{day.isoformat()}")


def image_path(category: str, brand: str, variant: int) -> str:
    slug = f"{category}-{brand}".lower().replace(" ", "-").replace("'", "")
    return f"products/{slug}-{variant}.jpg"


DEMO_ERROR_BUDGET = 0.05  # MAX_EMBEDDING_ERROR_RATIO's default


def demo_price(category: str, brand: str, condition: str, variant: int, noise: float) -> Decimal:
    """The demo's price model (see CONDITION_FACTORS): `noise` is the log-normal draw."""
    median, brands = CATEGORIES[category]
    brand_factor = 0.6 + 0.8 * brands.index(brand) / (len(brands) - 1)
    factor = brand_factor * CONDITION_FACTORS[condition] * MODEL_FACTORS[variant]
    return Decimal(str(round(median * factor * noise, 2)))


def products_for_day(
    day: date, cdn_url: str, sales_per_day: int = DEFAULT_SALES_PER_DAY, seed: int = DEFAULT_SEED
) -> list[Sale]:
    """The day's sold products, about a fifth as many unsold ones, and a few deliberately bad rows."""
    rng = _day_rng(seed, day, "products")
    start = datetime.combine(day, time(0, 0), tzinfo=UTC)
    sales: list[Sale] = []
    total = sales_per_day + max(1, sales_per_day // 5)
    for n in range(total):
        category = rng.choice(sorted(CATEGORIES))
        brand = rng.choice(CATEGORIES[category][1])
        tenant, condition = _weighted(rng, TENANTS), _weighted(rng, CONDITIONS)
        variant = rng.randrange(IMAGE_VARIANTS)
        price = demo_price(category, brand, condition, variant, rng.lognormvariate(0, PRICE_NOISE))
        sold = n < sales_per_day
        sales.append(
            Sale(
                id=f"SG-{day:%Y%m%d}-{n:05d}",
                tenant_id=tenant,
                category=category,
                brand=brand,
                condition=condition,
                sold_price=price,
                sold_date=start + timedelta(seconds=rng.randrange(86_400)) if sold else None,
                image_url=f"{cdn_url}/{image_path(category, brand, variant)}",
                description=rng.choice(DESCRIPTIONS),
                status="SOLD" if sold else rng.choice(("AVAILABLE", "RESERVED")),
            )
        )
    # The failures the pipeline must survive, in the first sold rows of the day: a null price
    # (quarantined), and as many of the three image failures as the day's 5% error budget allows,
    # so a small demo day succeeds and a normal one (60 sales or more) shows all three.
    image_failures: list[dict[str, Any]] = [
        {"image_url": f"{cdn_url}/products/missing-{day:%Y%m%d}.jpg"},
        {"image_url": f"{cdn_url}/bad/not-an-image.jpg"},
        {"image_url": f"{cdn_url}/bad/oversized.jpg"},
    ][: int((sales_per_day - 1) * DEMO_ERROR_BUDGET)]
    bad = [*image_failures, {"sold_price": None}] if sales_per_day >= 2 else []
    for index, change in enumerate(bad):
        sales[index] = replace(sales[index], **change)
    return sales


def write_cdn_files(cdn_dir: Path, pictures: str = "drawings") -> int:
    """Every image the demo rows point at, plus the deliberately broken files. Returns files written.
    `pictures` "photos" puts the photo corpus's pictures (2-5 MB each) where the drawings go."""
    written = 0
    kind = cdn_dir / ".pictures"
    fresh = not kind.exists() or kind.read_text() != pictures
    for n, (category, brand, variant) in enumerate(
        (c, b, v)
        for c, (_, brands) in CATEGORIES.items()
        for b in brands
        for v in range(IMAGE_VARIANTS)
    ):
        path = cdn_dir / image_path(category, brand, variant)
        if fresh or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            if pictures == "photos":
                path.write_bytes(corpus_picture(n))
            else:
                path.write_bytes(draw_product_image(category, brand, variant))
            written += 1
    kind.write_text(pictures)
    bad = cdn_dir / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "not-an-image.jpg").write_text("<html><body>Product not found</body></html>\n")
    oversized = bad / "oversized.jpg"
    if not oversized.exists() or oversized.stat().st_size != OVERSIZED_BYTES:
        with oversized.open("wb") as handle:
            handle.write(b"\xff\xd8\xff\xe0")
            handle.write(b"\0" * (OVERSIZED_BYTES - 4))
    return written


def sales_data_items(day: date, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """One day of SalesData in its single-table layout: 11 stores, 25 products, the company, insights."""
    rng = _day_rng(seed, day, "sales-data")
    d = day.isoformat()
    items: list[dict[str, Any]] = []

    def money(value: float) -> Decimal:
        return Decimal(str(round(value, 2)))

    company_revenue = Decimal(0)
    company_transactions = 0
    for store_id, name, region in STORES:
        transactions = rng.randint(40, 400)
        revenue = money(transactions * rng.uniform(25, 140))
        company_revenue += revenue
        company_transactions += transactions
        items.append(
            {
                "PK": f"STORE#{store_id}",
                "SK": f"DATE#{d}",
                "GSI1PK": f"DATE#{d}",
                "GSI1SK": f"STORE#{store_id}",
                "store_id": store_id,
                "store_name": name,
                "region": region,
                "total_revenue": revenue,
                "transaction_count": transactions,
                "avg_transaction_value": money(float(revenue) / transactions),
                "items_sold": transactions + rng.randint(0, transactions),
                "unique_customers": rng.randint(30, transactions),
            }
        )
    for n in range(1, DEMO_PRODUCTS + 1):
        category = sorted(CATEGORIES)[n % len(CATEGORIES)]
        brand = CATEGORIES[category][1][n % 5]
        units = rng.randint(1, 60)
        avg_price = money(CATEGORIES[category][0] * rng.uniform(0.5, 1.5))
        items.append(
            {
                "PK": f"PRODUCT#P{n:03d}",
                "SK": f"DATE#{d}",
                "GSI1PK": f"DATE#{d}",
                "GSI1SK": f"PRODUCT#P{n:03d}",
                "product_id": f"P{n:03d}",
                "product_name": f"{brand} {category} #{n}",
                "category": category,
                "units_sold": units,
                "avg_price": avg_price,
                "revenue": money(units * float(avg_price)),
            }
        )
    items.append(
        {
            "PK": "COMPANY",
            "SK": f"DATE#{d}",
            "GSI1PK": f"DATE#{d}",
            "GSI1SK": "COMPANY",
            "total_revenue": company_revenue,
            "transaction_count": company_transactions,
            "store_count": len(STORES),
        }
    )

    def insight(kind: str, n: int, **fields: Any) -> dict[str, Any]:
        insight_id = f"{kind[:3]}-{day:%Y%m%d}-{n}"
        return {
            "PK": f"INSIGHT#{d}",
            "SK": f"{kind}#{insight_id}",
            "GSI1PK": f"DATE#{d}",
            "GSI1SK": f"INSIGHT#{kind}#{insight_id}",
            "insight_id": insight_id,
            "type": kind,
            **fields,
        }

    for n in range(rng.randint(2, 4)):
        store = rng.choice(STORES)
        expected = rng.uniform(800, 4000)
        observed = expected * rng.choice((rng.uniform(0.2, 0.6), rng.uniform(1.6, 3.0)))
        items.append(
            insight(
                "ANOMALY",
                n,
                severity=rng.choice(("LOW", "MEDIUM", "HIGH")),
                metric="revenue",
                store_id=store[0],
                product_id=f"P{rng.randint(1, DEMO_PRODUCTS):03d}",
                observed_value=money(observed),
                expected_value=money(expected),
                deviation_pct=money((observed - expected) / expected * 100),
                description=f"Revenue at {store[1]} far from its usual level",
            )
        )
    for n in range(rng.randint(3, 5)):
        store = rng.choice(STORES)
        change = rng.uniform(-25, 40)
        items.append(
            insight(
                "TREND",
                n,
                metric=rng.choice(("revenue", "units_sold", "avg_price")),
                direction="up" if change >= 0 else "down",
                change_pct=money(change),
                period_days=rng.choice((7, 14, 28)),
                store_id=store[0],
                description=f"{'Rising' if change >= 0 else 'Falling'} sales at {store[1]}",
            )
        )
    for n in range(rng.randint(2, 4)):
        store = rng.choice(STORES)
        items.append(
            insight(
                "RECOMMENDATION",
                n,
                priority=rng.choice(("LOW", "MEDIUM", "HIGH")),
                action=rng.choice(("restock", "reprice", "promote", "transfer stock")),
                store_id=store[0],
                product_id=f"P{rng.randint(1, DEMO_PRODUCTS):03d}",
                expected_impact=money(rng.uniform(100, 5000)),
                confidence=money(rng.uniform(0.5, 0.99)),
                description=f"Suggested action for {store[1]}",
            )
        )
    return items


PRODUCTS_DDL = """
CREATE SCHEMA IF NOT EXISTS smartgo;
CREATE TABLE IF NOT EXISTS smartgo.products (
    id text PRIMARY KEY,
    tenant_id text NOT NULL,
    category text,
    brand text,
    condition text,
    sold_price numeric(12, 2),
    sold_date timestamptz,
    image_url text,
    description text,
    status text NOT NULL
);
CREATE INDEX IF NOT EXISTS products_status_sold_date ON smartgo.products (status, sold_date);
"""


def seed_postgres(
    conninfo: str, days: list[date], cdn_url: str, sales_per_day: int, seed: int
) -> int:
    """Replace the given days' demo products in one transaction. Returns rows written."""
    import psycopg  # here: 0.17 s, for `seed` and `demo` alone

    rows = 0
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(PRODUCTS_DDL)
        with conn.cursor() as cursor:
            for day in days:
                cursor.execute(
                    "DELETE FROM smartgo.products WHERE id LIKE %s", (f"SG-{day:%Y%m%d}-%",)
                )
                sales = products_for_day(day, cdn_url, sales_per_day, seed)
                with cursor.copy(
                    "COPY smartgo.products (id, tenant_id, category, brand, condition, sold_price, "
                    "sold_date, image_url, description, status) FROM STDIN"
                ) as copy:
                    for sale in sales:
                        copy.write_row(tuple(sale.as_row().values()))
                rows += len(sales)
    return rows


def seed_sales_data(dynamodb, table_name: str, days: list[date], seed: int) -> int:
    serializer = TypeSerializer()
    items = [item for day in days for item in sales_data_items(day, seed)]
    requests = [
        {"PutRequest": {"Item": {k: serializer.serialize(v) for k, v in item.items()}}}
        for item in items
    ]
    write_items(dynamodb, table_name, requests)
    return len(items)


@dataclass(frozen=True)
class SeedSummary:
    days: int
    products: int
    sales_data_items: int
    images_drawn: int


def seed(
    info, days: list[date], sales_per_day: int = DEFAULT_SALES_PER_DAY, seed: int = DEFAULT_SEED
) -> SeedSummary:
    """Seed the running local stack (`StackInfo`) with the given days."""
    images = write_cdn_files(Path(info.home) / "cdn", settings().demo_pictures)
    products = seed_postgres(info.postgres_uri, days, info.cdn_url, sales_per_day, seed)
    items = seed_sales_data(aws_client(info, "dynamodb"), SALES_DATA_TABLE, days, seed)
    return SeedSummary(len(days), products, items, images)
