"""The SmartGo API source against a loopback API that misbehaves on purpose, one class of
misbehaviour a test: filters it was asked to apply and ignored, answers that would exhaust memory,
pages that drip, waits past the allowance, pages capped below the size asked, paging that never
ends, values no row can hold, and a token echoed back."""

import contextlib
import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from smartgo_analytics.core.outage import OutageTooLong
from smartgo_analytics.core.sales import OTHER_TENANT, OUTSIDE_WINDOW, validated_day
from smartgo_analytics.resources.sales_api import SalesApiError, SmartGoApi

START = datetime(2024, 3, 9, tzinfo=UTC)
END = START + timedelta(days=1)
TOKEN = "tok-7f3a9c-never-shown"
TENANT = "carousel-labs"


def item(n: int, **changes) -> dict:
    return {
        "productId": f"API-{n:04d}",
        "tenantId": TENANT,
        "category": "Toys",
        "brand": "LEGO",
        "condition": "Good",
        "soldPrice": f"{10 + n}.50",
        "soldDate": (START + timedelta(minutes=n)).isoformat().replace("+00:00", "Z"),
        "imageUrl": f"https://cdn.example/{n}.jpg",
        "description": "ok",
    } | changes


class Misbehaving:
    """An API on 127.0.0.1 whose answer to each request is `answer(handler, query)`: the test
    writes the misbehaviour; `requests` keeps each request's query and headers."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler, dict], None]):
        self.requests: list[tuple[dict, dict]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                api.requests.append((query, dict(self.headers)))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    answer(self, query)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/products"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(answer):
        servers.append(Misbehaving(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def send(request, body, status: int = 200, headers: dict | None = None, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    request.send_response(status)
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)


def api(url: str, pagination: str = "cursor", **options) -> SmartGoApi:
    return SmartGoApi(
        url=url, pagination=pagination, page_size=7, token=TOKEN, tenant=TENANT, **options
    )


def read(source: SmartGoApi, allowance_s: float = 30.0):
    """The day as the smartgo_sales asset reads it: every row checked against window and tenant."""
    asked = partial(validated_day, window=(START, END), tenant=source.tenant)
    (table, rejected), outage = source.read_sold_products(START, END, asked, allowance_s)
    return table, rejected, outage


def one_page(items: list, **extra) -> Callable:
    return lambda request, query: send(request, {"items": items, **extra})


# --- filters the server was asked to apply -------------------------------------------------------


def test_rows_of_another_tenant_or_outside_the_window_are_quarantined_whatever_the_server_sent(
    serve,
):
    rows = [item(n) for n in range(6)]
    rows[1]["tenantId"] = "northwind-resale"  # the tenant parameter ignored
    rows[2]["soldDate"] = "2024-03-10T00:00:00Z"  # the end is exclusive
    rows[3]["soldDate"] = "2024-03-08T23:59:59.999999Z"
    rows[4]["soldDate"] = (
        "2024-03-09T20:30:00-05:00"  # 01:30 UTC the next day: moved out by its zone
    )
    rows[5]["soldDate"] = "2024-03-09T03:00:00+05:00"  # 22:00 UTC the day before
    server = serve(one_page(rows))
    table, rejected, _ = read(api(server.url))
    assert table.column("product_id").to_pylist() == ["API-0000"]
    reasons = {r.product_id: r.reason for r in rejected}
    assert reasons == {
        "API-0001": OTHER_TENANT,
        "API-0002": OUTSIDE_WINDOW,
        "API-0003": OUTSIDE_WINDOW,
        "API-0004": OUTSIDE_WINDOW,
        "API-0005": OUTSIDE_WINDOW,
    }
    # It was asked for the tenant and the window; it is not believed to have applied them.
    query = server.requests[0][0]
    assert query["tenantId"] == TENANT
    assert (query["soldFrom"], query["soldTo"]) == ("2024-03-09T00:00:00Z", "2024-03-10T00:00:00Z")


def test_the_check_says_when_a_source_ignored_a_filter():
    from smartgo_analytics.checks import filters_result

    ignored = filters_result(3, 2, "api")
    assert not ignored.passed and "3 rows outside the window and 2 rows of another tenant" in (
        ignored.description or ""
    )
    assert filters_result(0, 0, "database").passed


# --- memory --------------------------------------------------------------------------------------


def test_a_small_gzip_that_inflates_past_the_page_limit_is_refused_while_inflating(serve):
    bomb = gzip.compress(b'{"items": [' + b" " * (300 * 2**20) + b"]}", compresslevel=9)
    assert len(bomb) < 400_000
    server = serve(lambda r, q: send(r, None, headers={"Content-Encoding": "gzip"}, raw=bomb))
    with pytest.raises(SalesApiError, match="cannot be read: over 1048576 bytes once inflated"):
        read(api(server.url, max_page_bytes=2**20))
    assert server.requests[0][1]["Accept-Encoding"] == "gzip, deflate"


def test_a_page_in_gzip_or_deflate_is_read(serve):
    page = json.dumps({"items": [item(n) for n in range(5)]}).encode()
    encodings = iter([("gzip", gzip.compress(page)), ("deflate", zlib.compress(page))])

    def answer(request, query):
        name, body = next(encodings)
        send(request, None, headers={"Content-Encoding": name}, raw=body)

    server = serve(answer)
    table, _, _ = read(api(server.url))
    assert table.num_rows == 5
    table, _, _ = read(api(server.url))
    assert table.num_rows == 5


@pytest.mark.parametrize(
    ("encoding", "named"),
    [("gzip, gzip", "stacked content encodings 'gzip, gzip' are refused"),
     ("zstd", "content encoding 'zstd' was not offered"),
     ("br", "content encoding 'br' was not offered")],
)  # fmt: skip
def test_stacked_or_unoffered_encodings_are_refused_by_name(serve, encoding, named):
    body = gzip.compress(gzip.compress(b'{"items": []}'))
    server = serve(lambda r, q: send(r, None, headers={"Content-Encoding": encoding}, raw=body))
    with pytest.raises(SalesApiError, match=named):
        read(api(server.url))


def test_a_page_of_countless_tiny_items_is_refused_before_it_is_parsed(serve):
    tiny = b'{"items": [' + b",".join([b"{}"] * 3_000_000) + b"]}"
    server = serve(lambda r, q: send(r, None, raw=tiny))
    with pytest.raises(SalesApiError, match="cannot be used: it holds over 640000 JSON values"):
        read(api(server.url, max_page_items=10_000))


def test_a_page_with_more_items_than_allowed_is_named(serve):
    server = serve(one_page([item(n) for n in range(30)]))
    with pytest.raises(SalesApiError, match="page 1 .* has 30 items, over 20 .*max_page_items"):
        read(api(server.url, max_page_items=20))


# --- time ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_server_that_drips_cannot_hold_the_day_past_the_page_deadline(serve, where):
    stop = threading.Event()

    def drip(request, query):
        if where == "body":
            request.send_response(200)
            request.send_header("Content-Length", "100000")
            request.end_headers()
            chunks = iter(lambda: b" ", None)
        else:
            chunks = iter(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: " + b"a" * 10_000)
            chunks = (bytes([c]) for c in chunks)
        for chunk in chunks:
            if stop.is_set():
                return
            request.wfile.write(chunk)
            time.sleep(0.1)  # each read is well within the 5 s read timeout

    server = serve(drip)
    began = time.monotonic()
    try:
        with pytest.raises(OutageTooLong, match="no whole page within 1 s .*page_deadline_s"):
            read(api(server.url, page_deadline_s=1.0, timeout_s=5.0), allowance_s=2.0)
    finally:
        stop.set()
    # Each try ends at its deadline: the day fails within the allowance and a few tries' deadlines.
    assert time.monotonic() - began < 15


@pytest.mark.parametrize(
    "retry_after",
    ["999999", "1e999", "Fri, 31 Dec 9999 23:59:59 GMT", "inf", "99999999999999999999999999"],
)
def test_a_retry_after_past_the_allowance_is_named_not_waited(serve, retry_after):
    server = serve(lambda r, q: send(r, {"message": "later"}, 503, {"Retry-After": retry_after}))
    began = time.monotonic()
    with pytest.raises(OutageTooLong, match="asked to be tried again in .*Retry-After.*past the"):
        read(api(server.url), allowance_s=60.0)
    assert time.monotonic() - began < 10 and len(server.requests) == 1


def test_a_retry_after_within_the_allowance_is_honoured(serve):
    answers = iter([(503, {"Retry-After": "2"})])

    def answer(request, query):
        status, headers = next(answers, (200, {}))
        send(request, {"items": [item(0)]} if status == 200 else {}, status, headers)

    server = serve(answer)
    table, _, outage = read(api(server.url), allowance_s=60.0)
    assert table.num_rows == 1 and outage.retries == 1


# --- paging --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pagination", ["page", "offset"])
def test_a_server_that_caps_its_page_size_below_the_one_asked_loses_nothing(serve, pagination):
    rows = [item(n) for n in range(40)]
    cap = 3  # the client asks for 7

    def capped(request, query):
        first = (int(query["page"]) - 1) * cap if pagination == "page" else int(query["offset"])
        send(request, {"items": rows[first : first + cap]})  # and says no total

    server = serve(capped)
    table, rejected, _ = read(api(server.url, pagination))
    assert table.column("product_id").to_pylist() == [r["productId"] for r in rows]
    assert not rejected


def test_a_cursor_that_never_ends_is_followed_no_further_than_the_pages_allowed(serve):
    def endless(request, query):
        n = int(query.get("cursor") or 0)
        send(request, {"items": [item(n % 1000)], "nextCursor": str(n + 1)})

    server = serve(endless)
    with pytest.raises(SalesApiError, match="more than 25 pages .*max_pages"):
        read(api(server.url, max_pages=25))
    assert len(server.requests) == 25


# --- values --------------------------------------------------------------------------------------


def test_values_no_row_can_hold_are_each_that_rows_reason(serve):
    huge = "9" * 5000
    page = (
        b'{"items": ['
        + b",".join(
            [
                json.dumps(item(0)).encode(),
                json.dumps(item(1)).replace('"11.50"', huge).encode(),  # a 5,000-digit price
                json.dumps(item(2)).replace('"API-0002"', huge).encode(),  # a 5,000-digit id
                json.dumps(item(3, soldDate="0001-01-01T00:00:00+05:00")).encode(),
                json.dumps(item(4, description={"html": "<b>"})).encode(),
                json.dumps(item(5, brand="\ud800")).encode(),  # a lone surrogate
                json.dumps(item(6, soldDate="9999-12-31T23:59:59-05:00")).encode(),
                json.dumps(item(7, category=["Toys"])).encode(),
                json.dumps(item(8, soldDate="2024-03-09T01:00:00Z" + "0" * 10_000)).encode(),
            ]
        )
        + b"]}"
    )
    server = serve(lambda r, q: send(r, None, raw=page))
    table, rejected, _ = read(api(server.url))
    assert table.column("product_id").to_pylist() == ["API-0000"]
    reasons = sorted(r.reason for r in rejected)
    assert reasons == sorted(
        [
            "implausible sold_price above 1000000",
            "product id is a Decimal, not an identifier",
            "sold_date out of range",
            "description is a dict, not text",
            "brand is not valid Unicode (a lone surrogate)",
            "sold_date out of range",
            "category is a list, not text",
            "unparseable sold_date",
        ]
    )


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b'{"items": [{"description": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}", "it nests too deeply"),
        (b'{"items": [}', "it is not JSON"),
        (b'{"items": ["\xff\xfe"]}', "it is not JSON"),
    ],
)  # fmt: skip
def test_a_page_that_cannot_be_parsed_is_named_in_one_line(serve, raw, named):
    server = serve(lambda r, q: send(r, None, raw=raw))
    with pytest.raises(
        SalesApiError, match=f"a page of the SmartGo API at .* cannot be used: {named}"
    ):
        read(api(server.url))


@pytest.mark.parametrize("link", ["http://[::1", "http://127.0.0.1:99999999/x", "//[bad"])
def test_a_malformed_next_link_is_named_not_followed(serve, link):
    server = serve(
        lambda r, q: send(r, {"items": [item(0)]}, headers={"Link": f'<{link}>; rel="next"'})
    )
    with pytest.raises(SalesApiError, match="next link is malformed"):
        read(api(server.url, "link"))
    assert len(server.requests) == 1


def test_a_token_echoed_back_appears_in_no_message_or_value(serve):
    def echo(request, query):
        if query.get("cursor") == "2":
            send(request, {"message": TOKEN}, 500)
            return
        send(
            request,
            {"items": [item(int(query.get("cursor") or 0), description=f"auth {TOKEN}")],
             "nextCursor": str(int(query.get("cursor") or 0) + 1)},
        )  # fmt: skip

    server = serve(echo)
    with pytest.raises(OutageTooLong) as failure:
        read(api(server.url), allowance_s=1.0)
    assert TOKEN not in str(failure.value)

    linked = serve(
        lambda r, q: send(r, {"items": [item(0)]},
                          headers={"Link": f'</v1/{TOKEN}/products?page=2>; rel="next"'})
        if "page" not in q
        else send(r, {"message": "gone"}, 410)
    )  # fmt: skip
    with pytest.raises(SalesApiError) as refused:
        read(api(linked.url, "link"))
    assert "410" in str(refused.value) and TOKEN not in str(refused.value)
    assert "[token]" in str(refused.value)

    quiet = serve(one_page([item(0, description=f"Bearer {TOKEN}", brand=TOKEN)]))
    table, _, _ = read(api(quiet.url))
    assert TOKEN not in json.dumps(table.to_pylist(), default=str)


def test_the_day_says_when_the_api_ignored_the_window_or_the_tenant(
    serve, stack, s3_bucket, bedrock, cdn, tmp_path
):
    """The asset's view: such rows quarantined with their reason, counted in the day's metadata,
    and the check source_honours_filters failed (the valid rows still make the day)."""
    from dagster import materialize

    from smartgo_analytics.assets.pricing_intelligence import smartgo_sales
    from smartgo_analytics_tests.pipeline import resources

    rows = [item(n) for n in range(5)]
    rows[1]["tenantId"] = "northwind-resale"
    rows[2]["soldDate"] = "2024-03-08T23:00:00Z"
    rows[3]["soldDate"] = "2024-03-09T21:00:00-05:00"
    server = serve(one_page(rows))
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    res["sales_source"] = api(server.url)
    result = materialize([smartgo_sales], resources=res, partition_key="2024-03-09")
    metadata = result.asset_materializations_for_node("smartgo_sales")[0].metadata
    figures = {k: v.value for k, v in metadata.items()}
    assert figures["valid_rows"] == 2 and figures["quarantined_rows"] == 3
    assert figures["rows_outside_window"] == 2 and figures["rows_of_other_tenants"] == 1
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["source_honours_filters"].passed
    assert "2 rows outside the window and 1 rows of another tenant" in (
        checks["source_honours_filters"].description or ""
    )
