"""The embedded local stack, the demo data and the `smartgo-analytics` command."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import boto3
import httpx
import psutil
import psycopg
import pytest

from smartgo_analytics.local import demo_data
from smartgo_analytics.local.drawings import draw_product_image

CLI = [sys.executable, "-m", "smartgo_analytics.cli"]


def cli(*args, home: Path, timeout=300, shell=False, **env):
    """The command line with these arguments (with `shell`, `bash` with them instead)."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SMARTGO_", "DAGSTER_HOME"))
    }
    environment.update(SMARTGO_HOME=str(home), **env)
    command = ["bash", *args] if shell else [*CLI, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


def processes_under(home: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(home) in cmdline and proc.info["pid"] != os.getpid():
            found.append(cmdline)
    return found


def test_the_stack_serves_sql_dynamodb_and_images(stack):
    summary = demo_data.seed(stack, [date(2025, 4, 1)], sales_per_day=50)
    assert summary.products == 60
    with psycopg.connect(stack.postgres_uri) as conn:
        sold = conn.execute(
            "SELECT count(*) FROM smartgo.products WHERE status = 'SOLD' AND sold_date >= %s AND sold_date < %s",
            ("2025-04-01T00:00:00Z", "2025-04-02T00:00:00Z"),
        ).fetchone()[0]
        assert sold == 50
        assert (
            conn.execute(
                "SELECT count(*) FROM smartgo.products WHERE description ~ '[^[:ascii:]]'"
            ).fetchone()[0]
            > 0
        )
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    items = dynamodb.query(
        TableName="SalesData",
        IndexName="GSI1",
        KeyConditionExpression="GSI1PK = :d",
        ExpressionAttributeValues={":d": {"S": "DATE#2025-04-01"}},
    )["Items"]
    kinds = {
        item["GSI1SK"]["S"].split("#")[0]
        + (
            "#" + item["GSI1SK"]["S"].split("#")[1]
            if item["GSI1SK"]["S"].startswith("INSIGHT")
            else ""
        )
        for item in items
    }
    assert {
        "STORE",
        "PRODUCT",
        "COMPANY",
        "INSIGHT#ANOMALY",
        "INSIGHT#TREND",
        "INSIGHT#RECOMMENDATION",
    } <= kinds
    assert sum(1 for i in items if i["GSI1SK"]["S"].startswith("STORE#")) == 11
    image = httpx.get(f"{stack.cdn_url}/{demo_data.image_path('Books', 'Penguin', 0)}")
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"


def test_the_demos_deliberate_bad_images_fit_the_days_error_budget():
    from datetime import date

    from smartgo_analytics.local.demo_data import products_for_day

    def bad_images(sales_per_day: int) -> int:
        sold = products_for_day(date(2025, 1, 15), "http://cdn", sales_per_day)[:sales_per_day]
        return sum("/bad/" in s.image_url or "/missing-" in s.image_url for s in sold)

    # Within 5% of the valid sales (one row has a null price), and all three kinds on a normal day.
    assert [bad_images(n) for n in (1, 20, 40, 60, 61, 200)] == [0, 0, 1, 2, 3, 3]


def test_the_demo_generator_is_deterministic():
    day = date(2025, 1, 15)
    assert demo_data.products_for_day(day, "http://cdn") == demo_data.products_for_day(
        day, "http://cdn"
    )
    assert demo_data.sales_data_items(day) == demo_data.sales_data_items(day)
    assert draw_product_image("Toys", "LEGO", 1) == draw_product_image("Toys", "LEGO", 1)
    other = demo_data.products_for_day(day, "http://cdn", seed=7)
    assert other != demo_data.products_for_day(day, "http://cdn")
    sales = demo_data.products_for_day(day, "http://cdn")
    assert sum(s.status == "SOLD" for s in sales) == 200 and any(
        s.sold_price is None for s in sales
    )
    assert sales[0].tenant_id in {"carousel-labs", "northwind-resale", "tokyo-vintage"}


def _taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["demo", "--days", "0"], {}, "--days: must be at least 1"),
        (["demo", "--end-date", "2025-13-40"], {}, "'2025-13-40' is not a date in YYYY-MM-DD form"),
        (
            ["demo"],
            {"SMARTGO_HOME": "/etc/hostname/smartgo"},
            "SMARTGO_HOME=/etc/hostname/smartgo is not writable",
        ),
        (
            ["demo"],
            {"SMARTGO_DEPLOYMENT": "staging"},
            "SMARTGO_DEPLOYMENT='staging' is not one of local, prod",
        ),
        (["demo"], {"SMARTGO_MOTO_PORT": "taken"}, "is already taken"),
        (["dev", "--port", "99999"], {}, "--port: 99999 is not a port (1-65535)"),
        (["dev", "--port", "0"], {}, "--port: 0 is not a port (1-65535)"),
        (["dev", "--port", "taken"], {}, "is already taken"),
        (["web", "--port", "taken"], {}, "--port: cannot serve on 127.0.0.1:"),
        (["web", "--host", "0.0.0.0"], {}, "opens the page to the network: set SMARTGO_WEB_TOKEN"),
        (
            ["demo"],
            {"TITAN_EMBEDDING_DIMENSION": "512"},
            "EMBEDDING_DIMENSION=512: Titan Multimodal Embeddings G1 (amazon.titan-embed-image-v1) "
            "makes vectors of 256, 384, 1024 values, not 512",
        ),
        (
            ["demo"],
            {
                "EMBEDDING_MODEL": "amazon.nova-2-multimodal-embeddings-v1:0",
                "EMBEDDING_DIMENSION": "3073",
            },
            "makes vectors of 256, 384, 1024, 3072 values, not 3073",
        ),
        (
            ["demo"],
            {"EMBEDDING_MODEL": "amazon.titan-embed-image-v2"},
            "EMBEDDING_MODEL: no embedding model 'amazon.titan-embed-image-v2'; the pipeline calls "
            "amazon.titan-embed-image-v1, amazon.nova-2-multimodal-embeddings-v1:0",
        ),
        (
            ["demo"],
            {"SEASON_HEMISPHERE": "eastern"},
            "SEASON_HEMISPHERE='eastern' must be northern or southern",
        ),
        (
            ["demo"],
            {"ICEBERG_CATALOG_TYPE": "hive"},
            "ICEBERG_CATALOG_TYPE='hive' is not one of sql, rest, glue",
        ),
        (["maintain", "--target-file-size", "big"], {}, "--target-file-size: 'big' is not a size"),
        (
            ["demo"],
            {"BEDROCK_REQUESTS_PER_MINUTE": "-60"},
            "BEDROCK_REQUESTS_PER_MINUTE=-60.0 must be a positive number",
        ),
        (["demo"], {"BEDROCK_TOKENS_PER_MINUTE": "nan"}, "BEDROCK_TOKENS_PER_MINUTE=nan must be"),
        (["demo"], {"SMARTGO_SALES_SOURCE": "ftp"}, "SMARTGO_SALES_SOURCE='ftp' is not one of"),
        (
            ["demo"],
            {"SMARTGO_SALES_SOURCE": "api", "SMARTGO_API_OPTIONS": '{"page_size": "lots"}'},
            "SMARTGO_API_OPTIONS:",
        ),
        (["demo"], {"BEDROCK_REQUESTS_PER_MINUTE": "lots"}, "'lots' is not a number"),
        (
            ["demo"],
            {
                "QUICKSIGHT_DATASET_IDS": '{"sales": "qs-1"}',
                "QUICKSIGHT_ACCOUNT_ID": "123456789012",
            },
            "QUICKSIGHT_DATASET_IDS names unknown datasets ['sales']",
        ),
        (
            ["demo"],
            {"QUICKSIGHT_DATASET_IDS": '{"trends": "qs-1"}'},
            "QUICKSIGHT_DATASET_IDS is set but QUICKSIGHT_ACCOUNT_ID is not",
        ),
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_nothing_left(tmp_path, args, env, message):
    port = _taken_port()
    if env.get("SMARTGO_MOTO_PORT") == "taken":
        env = {"SMARTGO_MOTO_PORT": str(port.getsockname()[1])}
    args = [str(port.getsockname()[1]) if a == "taken" else a for a in args]
    home = tmp_path / "home"
    if "SMARTGO_HOME" in env:
        home = Path(env.pop("SMARTGO_HOME"))
    result = cli(*args, home=home, timeout=60, **env)
    port.close()
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (home / "stack.json").exists() and processes_under(home) == []


def test_demo_runs_every_asset_end_to_end_and_leaves_nothing_running(tmp_path):
    home = tmp_path / "home"
    result = cli(
        "demo", "--days", "1", "--end-date", "2025-01-15", "--sales-per-day", "100", home=home
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = {
        line.split()[0]: line.split()[1:4]
        for line in result.stdout.splitlines()
        if line.startswith(("smartgo_", "product_", "dynamodb_", "quicksight/"))
    }
    assert summary["smartgo_sales"] == ["1", "99", "1"]  # 100 sold, the null price quarantined
    assert summary["smartgo_sales_iceberg"] == ["1", "99", "3"]  # 404, HTML body, oversized image
    assert summary["quicksight/store_summaries"][:2] == ["1", "11"]
    assert summary["quicksight/top_products"][:2] == ["1", "20"]
    assert {
        "dynamodb_daily_metrics",
        "product_image_embeddings",
        "quicksight/anomalies",
        "quicksight/trends",
        "quicksight/recommendations",
    } <= set(summary)
    assert not (home / "stack.json").exists() and processes_under(home) == []
    lake = home / "lake" / "smartgo-analytics-local"
    assert (lake / "quicksight/manifests/top_products.json").exists()
    assert len((lake / "quicksight/top_products/2025-01-15.json").read_text().splitlines()) == 20

    query = cli(
        "query",
        "smartgo_sales",
        "--where",
        "embedding_error is not null",
        "--columns",
        "product_id,embedding_error",
        "--format",
        "json",
        home=home,
    )
    assert query.returncode == 0, query.stderr
    failed = {
        json.loads(line)["product_id"]: json.loads(line)["embedding_error"]
        for line in query.stdout.splitlines()
    }
    errors = sorted(failed.values())
    assert (
        len(errors) == 3
        and any("HTTP 404" in e for e in errors)
        and any("not an image" in e for e in errors)
    )
    assert processes_under(home) == []

    # A second day in the same month, its sales read through the stack's SmartGo API this time,
    # then the table's care: one file a partition, the same rows.
    second = cli(
        "demo",
        "--days",
        "1",
        "--end-date",
        "2025-01-16",
        "--sales-per-day",
        "100",
        home=home,
        SMARTGO_SALES_SOURCE="api",
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    everything = (
        "query",
        "smartgo_sales",
        "--limit",
        "1000",
        "--format",
        "json",
        "--columns",
        "product_id,tenant_id,category,sold_price,sold_date,embedding_vector,embedding_error",
    )
    before = sorted(cli(*everything, home=home).stdout.splitlines())
    table_dir = lake / "warehouse" / "pricing_intelligence" / "smartgo_sales"
    data_before = list(table_dir.rglob("*.parquet"))
    maintain = cli(
        "maintain",
        "--expire-older-than",
        "0s",
        "--keep-last",
        "1",
        "--orphan-grace",
        "0s",
        home=home,
    )
    assert maintain.returncode == 0, maintain.stderr
    report = dict(line.split(": ", 1) for line in maintain.stdout.splitlines() if ": " in line)
    data_after = list((table_dir / "data").rglob("*.parquet"))
    partitions = {p.parent for p in data_before if "/data/" in str(p)}
    assert len(data_after) == len(partitions) < len(data_before), report
    assert report["snapshots_left"] == "1" and int(report["files_removed"]) > 0
    assert sorted(cli(*everything, home=home).stdout.splitlines()) == before and len(before) == 198

    sql = cli(
        "sql",
        "SELECT tenant_id, count(*) AS sales, sum(sold_price) AS revenue FROM smartgo_sales "
        "GROUP BY 1 ORDER BY 1",
        "--format",
        "json",
        home=home,
    )
    assert sql.returncode == 0, sql.stderr
    by_tenant = {}
    for row in map(json.loads, before):
        by_tenant.setdefault(row["tenant_id"], []).append(row["sold_price"])
    assert [(r["tenant_id"], r["sales"]) for r in map(json.loads, sql.stdout.splitlines())] == [
        (tenant, len(prices)) for tenant, prices in sorted(by_tenant.items())
    ]

    # Comparables from the demo's index: the command a newcomer types, and its clear errors.
    sold = {row["product_id"]: row for row in map(json.loads, before)}

    def others_of_its_kind(product: str) -> list[str]:
        row = sold[product]
        return [
            p
            for p, other in sold.items()
            if p != product
            and other["tenant_id"] == row["tenant_id"]
            and other["category"] == row["category"]
            and other["embedding_vector"] is not None
        ]

    with_vector = [p for p, row in sorted(sold.items()) if row["embedding_vector"] is not None]
    lone = [p for p in with_vector if not others_of_its_kind(p)]
    if lone:  # the only sale of its tenant and category: said, with the way to widen
        alone = cli("comparables", "--product-id", lone[0], home=home)
        assert alone.returncode == 2 and "--any-category asks every category" in alone.stderr
    asked = next(p for p in with_vector if len(others_of_its_kind(p)) >= 5)
    answer = cli("comparables", "--product-id", asked, "--k", "5", "--format", "json", home=home)
    assert answer.returncode == 0, answer.stderr
    found = json.loads(answer.stdout)
    tenant = sold[asked]["tenant_id"]
    category = sold[asked]["category"]  # asked by id: the product's own category
    kind = others_of_its_kind(asked)
    assert found["tenant"] == tenant and len(found["comparables"]) == min(5, len(kind))
    assert all(
        sold[c["product_id"]]["tenant_id"] == tenant
        and c["product_id"] != asked
        and c["category"] == category
        for c in found["comparables"]
    )
    assert found["asked"]["category"] == category and found["strength"]["verdict"]
    assert [c["sold_price"] for c in found["comparables"]] == [
        sold[c["product_id"]]["sold_price"] for c in found["comparables"]
    ]
    band = found["suggested_price"]
    assert band["p25"] <= band["median"] <= band["p75"]
    assert band["comparables"] == min(5, len(kind))
    table = cli("comparables", "--product-id", asked, home=home)
    shown = f"({min(10, len(kind))} rows)"
    assert table.returncode == 0 and "suggested price" in table.stdout and shown in table.stdout
    assert "strength: " in table.stdout
    wide = cli("comparables", "--product-id", asked, "--any-category", home=home)
    assert wide.returncode == 0 and "(10 rows)" in wide.stdout
    no_vector = next(iter(failed))
    for args, message in [
        (("--product-id", "SG-NOPE"), "unknown product 'SG-NOPE'"),
        (("--product-id", no_vector), f"product '{no_vector}' has no vector: "),
        (("--product-id", asked, "--tenant", "nobody"), "tenant 'nobody' has no sold items"),
        (("--product-id", asked, "--image", "x.png"), "not allowed with argument"),
        (("--product-id", asked, "--k", "0"), "must be at least 1"),
    ]:
        wrong = cli("comparables", *args, home=home)
        assert wrong.returncode == 2 and message in wrong.stderr, wrong.stderr

    # One command's CSV piped into the next, as a shell user does: no "\r" rides along.
    command = " ".join(shlex.quote(part) for part in CLI)
    piped = cli(
        "-c",
        f"pid=$({command} query smartgo_sales --where {shlex.quote(f'product_id == {asked!r}')} "
        f'--columns product_id --format csv | tail -n 1); {command} comparables --product-id "$pid" '
        "--k 2 --format csv",
        home=home,
        shell=True,
    )
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stdout and len(piped.stdout.splitlines()) == 3  # the header and 2 rows


@pytest.mark.parametrize(
    ("stop", "sigint_ignored"),
    [(signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["ctrl-c", "sigterm-in-the-background"],
)
def test_stopping_dev_stops_dagster_and_the_stack(tmp_path, stop, sigint_ignored):
    """Ctrl-C in a terminal, or SIGTERM to a `dev` a shell started in the background (which starts
    it with SIGINT ignored)."""
    home = tmp_path / "home"
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SMARTGO_", "DAGSTER_HOME"))
    }
    environment.update(SMARTGO_HOME=str(home))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    proc = subprocess.Popen(
        [
            *CLI,
            "dev",
            "--days",
            "1",
            "--end-date",
            "2025-01-15",
            "--sales-per-day",
            "10",
            "--port",
            str(port),
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=ignore,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("dagster dev did not answer")
        assert (home / "stack.json").exists()
        stopped = time.monotonic()
        proc.send_signal(stop)
        proc.wait(timeout=60)
        assert time.monotonic() - stopped < 20
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1)
    assert not (home / "stack.json").exists()
    assert processes_under(home) == []


def test_the_page_of_the_readme_answers_twenty_people_at_once_on_every_route(tmp_path):
    """`make demo`, then `smartgo-analytics web`, as the README says: the page opens the stack's
    PostgreSQL once for its life (never per request), and stops it when it stops."""
    home = tmp_path / "home"
    demo = cli(
        "demo", "--days", "1", "--end-date", "2025-01-15", "--sales-per-day", "40", home=home
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    sold = cli("query", "smartgo_sales", "--columns", "product_id", "--format", "csv", home=home)
    product = sold.stdout.splitlines()[-1]
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SMARTGO_")}
    page = subprocess.Popen(
        [*CLI, "web", "--port", str(number)],
        env={**environment, "SMARTGO_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{number}"
    routes = [
        "/",
        f"/?product_id={product}",
        f"/api/comparables?product_id={product}&k=3",
        f"/api/sales/{product}",
        "/api/sales/SG-NOPE-1",  # each unknown product once started and stopped a database
        "/api/comparables?product_id=SG-NOPE-1",
    ]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/", timeout=5)
                break
            except httpx.TransportError:
                assert page.poll() is None and time.monotonic() < deadline, page.stderr.read()
                time.sleep(0.1)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(20) as people:
            for route in routes:
                answers = list(
                    people.map(lambda r: httpx.get(f"{url}{r}", timeout=60), [route] * 20)
                )
                statuses = {a.status_code for a in answers}
                expected = 404 if route.endswith("SG-NOPE-1") and "sales" in route else None
                assert statuses == {expected or (400 if "NOPE" in route else 200)}, (
                    route,
                    [a.text[:200] for a in answers if a.status_code >= 500][:2],
                )
                assert len({a.text for a in answers if "/api/" in route}) <= 1, route
    finally:
        page.terminate()
        page.wait(30)
    assert processes_under(home) == []  # the page's PostgreSQL stopped with it
