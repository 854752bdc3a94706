"""The SmartGo API as a source of sales, against loopback servers: every pagination kind, faults
that pass and faults that do not, hostile pages, and the same day read from the database and the
API giving the same table."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest

from smartgo_analytics.core.outage import OutageTooLong
from smartgo_analytics.core.sales import validated_day
from smartgo_analytics.local.sales_api import serve_sales_api
from smartgo_analytics.resources.postgres import SmartGoDatabase
from smartgo_analytics.resources.sales_api import SalesApiError, SmartGoApi
from smartgo_analytics_tests.pipeline import insert_products, sale

START = datetime(2024, 3, 9, tzinfo=UTC)
END = START + timedelta(days=1)
TOKEN = "s3cr3t-token-value"


def items(count: int) -> list[dict]:
    return [
        {
            "productId": f"API-{n:04d}",
            "tenantId": "carousel-labs",
            "category": "Toys",
            "brand": "LEGO",
            "condition": "Good",
            "soldPrice": f"{10 + n}.50",
            "soldDate": (START + timedelta(minutes=n)).isoformat().replace("+00:00", "Z"),
            "imageUrl": f"https://cdn.example/{n}.jpg",
            "description": "ok",
        }
        for n in range(count)
    ]


class Double:
    """A SmartGo-API-shaped server on 127.0.0.1 over `rows`, paginating as its client asks, with
    `faults` (status or "reset", Retry-After) served first and `hostile` answers for named cases."""

    def __init__(self, rows: list[dict], page_size: int = 7):
        self.rows, self.page_size = rows, page_size
        self.faults: list[tuple] = []
        self.hostile: str | None = None
        self.requests: list[tuple[float, str, dict]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                double.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/products"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.requests.append((time.monotonic(), parts.path, dict(request.headers)))
        if self.faults:
            fault, after = self.faults.pop(0)
            if fault == "reset":
                request.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"items": [')
                request.close_connection = True
                return
            self.send(
                request, fault, {"message": "not now"}, {"Retry-After": after} if after else {}
            )
            return
        if parts.path != "/v1/products":
            self.send(request, 404, {"message": "no such route"})
            return
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send(request, 401, {"message": "no"})
            return
        size = int(query.get("pageSize", self.page_size))
        if "page" in query:
            first = (int(query["page"]) - 1) * size
        elif "offset" in query:
            first = int(query["offset"])
        else:
            first = int(query.get("cursor") or 0)
        page = self.rows[first : first + size]
        following = first + size if first + size < len(self.rows) else None
        answer = {"data": {"items": page}, "next": following, "total": len(self.rows)}
        headers = {}
        if following is not None:
            headers["Link"] = f'</v1/products?cursor={following}&pageSize={size}>; rel="next"'
        if self.hostile == "repeat" and first >= size:
            answer["data"]["items"] = self.rows[:size]
        if self.hostile == "loop" and following is not None and first >= 2 * size:
            answer["next"] = size  # the second page's cursor, again
            headers["Link"] = f'</v1/products?cursor={size}&pageSize={size}>; rel="next"'
        if self.hostile == "total":
            answer["total"] = len(self.rows) + 3
        if self.hostile == "elsewhere" and following is not None:
            headers["Link"] = (
                f'<http://127.0.0.2:{self.server.server_port}/v1/products?cursor={following}>; rel="next"'
            )
        if self.hostile == "not json":
            self.send(request, 200, None, raw=b"<html>maintenance</html>")
            return
        self.send(request, 200, answer, headers)

    @staticmethod
    def send(request, status: int, body, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body).encode()
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def double():
    server = Double(items(40))
    yield server
    server.close()


def source(url: str, pagination: str = "cursor", token: str = TOKEN) -> SmartGoApi:
    return SmartGoApi(
        url=url,
        pagination=pagination,
        items_path="data.items",
        cursor_path="next",
        page_size=7,
        token=token,
    )


def read(api: SmartGoApi, allowance_s: float = 30.0):
    (table, rejected), outage = api.read_sold_products(START, END, validated_day, allowance_s)
    return table, rejected, outage


@pytest.mark.parametrize("pagination", ["cursor", "page", "offset", "link"])
def test_every_pagination_kind_reads_the_whole_day_in_order(double, pagination):
    table, rejected, _ = read(source(double.url, pagination))
    assert table.column("product_id").to_pylist() == [f"API-{n:04d}" for n in range(40)]
    assert table.column("sold_price").to_pylist()[:2] == [10.5, 11.5]
    assert table.column("sold_date")[0].as_py() == START and rejected == []
    assert len(double.requests) == 6  # 40 rows, 7 a page: 6 pages, none asked twice
    assert all(h.get("Authorization") == f"Bearer {TOKEN}" for _, _, h in double.requests)


def test_rows_the_api_gives_badly_are_quarantined_with_their_reason_as_the_databases_are(double):
    double.rows[3]["soldPrice"] = "N/A"
    double.rows[5]["soldDate"] = "yesterday"
    double.rows[8]["productId"] = "../../etc/passwd"
    double.rows[9] = "not an object"
    table, rejected, _ = read(source(double.url))
    assert table.num_rows == 36
    reasons = {r.product_id: r.reason for r in rejected}
    assert reasons["API-0003"] == "unparseable sold_price 'N/A'"
    assert reasons["API-0005"] == "unparseable sold_date"
    assert reasons["../../etc/passwd"].startswith("product id")
    assert reasons[None].startswith("missing product id")


def test_5xx_429_and_resets_are_waited_out_honouring_retry_after(double):
    double.faults = [(429, "3"), (503, None), ("reset", None)]
    table, _, outage = read(source(double.url))
    assert table.num_rows == 40 and outage.retries == 3
    # The server said 3 s: the circuit stayed open as long (its own first pause is at most 1 s).
    assert double.requests[1][0] - double.requests[0][0] >= 3.0


def test_an_outage_longer_than_the_allowance_fails_naming_the_api(double):
    double.faults = [(503, None)] * 100
    with pytest.raises(OutageTooLong, match="SmartGo API was unavailable"):
        read(source(double.url), allowance_s=2.0)


@pytest.mark.parametrize(
    ("route", "token", "reason"),
    [
        ("/v1/products", "wrong-token", "refused the token \\(401\\).*SMARTGO_API_TOKEN"),
        ("/v1/nothing-here", TOKEN, "answered 404 .*SMARTGO_API_URL"),
    ],
)
def test_a_refused_token_or_a_missing_route_fails_at_once_naming_the_setting(
    double, route, token, reason
):
    api = source(double.url.replace("/v1/products", route), token=token)
    with pytest.raises(SalesApiError, match=reason) as error:
        read(api)
    assert len(double.requests) == 1
    assert TOKEN not in str(error.value) and "wrong-token" not in str(error.value)


@pytest.mark.parametrize(
    ("hostile", "pagination", "named"),
    [
        ("repeat", "page", "page 2 of the SmartGo API repeats an earlier page"),
        ("loop", "cursor", "pagination loops"),
        ("loop", "link", "pagination loops"),
        ("total", "cursor", "said 43 sales but gave 40"),
        ("elsewhere", "link", "leaves SMARTGO_API_URL's origin: not followed"),
        ("not json", "cursor", "is not JSON"),
    ],
)
def test_hostile_pages_are_named_never_followed(double, hostile, pagination, named):
    double.hostile = hostile
    with pytest.raises(SalesApiError, match=named):
        read(source(double.url, pagination))
    # Nothing but the configured origin was asked, and no page past the one that gave it away.
    assert all(path == "/v1/products" for _, path, _ in double.requests)
    assert len(double.requests) <= 6


def test_a_configuration_that_cannot_work_is_named():
    with pytest.raises(SalesApiError, match="SMARTGO_API_PAGINATION='pages'"):
        SmartGoApi(url="https://api.example/v1/products", pagination="pages").check()
    with pytest.raises(SalesApiError, match="SMARTGO_API_URL='file:///etc/passwd'"):
        SmartGoApi(url="file:///etc/passwd").check()
    with pytest.raises(SalesApiError, match="map nothing to \\['image_url'\\]"):
        SmartGoApi(
            url="https://api.example/v1/products",
            fields={"productId": "id", "tenantId": "tenant_id", "soldPrice": "sold_price",
                    "soldDate": "sold_date"},
        ).check()  # fmt: skip


def test_the_same_day_read_from_the_database_and_the_api_gives_the_same_table(stack):
    day = "2024-03-10"
    rows = [sale(f"BOTH-{n:03d}", day, f"https://cdn.example/{n}.jpg") for n in range(25)]
    rows[2]["sold_price"] = None  # quarantined by both
    rows[4]["sold_date"] = rows[5]["sold_date"]  # two sales in the same second
    insert_products(stack.postgres_uri, rows)
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    server = serve_sales_api(stack.postgres_uri, TOKEN)
    try:
        database = SmartGoDatabase(dsn=stack.postgres_uri)
        api = SmartGoApi(url=server.url, token=TOKEN, page_size=4)
        (from_db, db_rejected), _ = database.read_sold_products(
            start, start + timedelta(days=1), validated_day, 10.0
        )
        (from_api, api_rejected), outage = api.read_sold_products(
            start, start + timedelta(days=1), validated_day, 10.0
        )
    finally:
        server.shutdown()
        server.server_close()
    assert from_db.num_rows == 24 and outage.retries == 0
    assert from_api.equals(from_db)
    assert [(r.product_id, r.reason) for r in api_rejected] == [
        (r.product_id, r.reason) for r in db_rejected
    ]
    assert isinstance(from_api, pa.Table)
