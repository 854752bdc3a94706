"""The functional core, without any server."""

import math
import statistics
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smartgo_analytics.core.batching import Batched, WriteBehind
from smartgo_analytics.core.embedding_day import (
    ReusedVectors,
    Sale,
    from_first_sale,
    mark_deferred,
)
from smartgo_analytics.core.imaging import BadImage, prepare_for, visual_features
from smartgo_analytics.core.models.titan import MODEL as TITAN
from smartgo_analytics.core.ndjson import decimal_to_json, decode_ndjson, encode_ndjson, plain_value
from smartgo_analytics.core.pacing import Pace
from smartgo_analytics.core.quicksight import (
    DATASETS_BY_NAME,
    MANIFEST_FILE_LIMIT,
    build_dataset,
    coerce,
    item_kind,
    plan_manifest,
    type_problems,
)
from smartgo_analytics.core.retry import backoff_delays, call_with_retries
from smartgo_analytics.core.sales import Rejected, quarter_of, season_of, validate_sale
from smartgo_analytics.core.sales_table import (
    REUSED_VECTOR_GONE,
    embeddings_batch,
    with_reused_vectors,
)
from smartgo_analytics.core.ssrf import UnsafeUrl, check_url
from smartgo_analytics.local.demo_data import demo_price, products_for_day
from smartgo_analytics.local.drawings import draw_product_image
from smartgo_analytics_tests.servers import bomb_png, png


def good_row(**changes):
    row = {
        "id": "P1",
        "tenant_id": "carousel-labs",
        "category": "Books",
        "brand": "Penguin",
        "condition": "Good",
        "sold_price": Decimal("12.50"),
        "sold_date": datetime(2025, 1, 15, 10, tzinfo=UTC),
        "image_url": "https://cdn.example.com/p1.jpg",
        "description": "Café ✓",
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"id": None}, "missing product id"),
        ({"tenant_id": " "}, "missing tenant_id"),
        ({"sold_price": None}, "null sold_price"),
        ({"sold_price": Decimal("-1")}, "negative sold_price"),
        ({"sold_price": Decimal("5000000")}, "implausible sold_price"),
        ({"sold_price": "abc"}, "unparseable sold_price"),
        ({"sold_price": Decimal("NaN")}, "non-finite sold_price"),
        ({"image_url": None}, "missing image_url"),
        ({"sold_date": "yesterday"}, "unparseable sold_date"),
        ({"id": "../../staging/x"}, "product id '../../staging/x' is not an identifier"),
        ({"id": "P1/../../P2"}, "product id 'P1/../../P2' is not an identifier"),
        ({"tenant_id": "acme/other"}, "tenant_id 'acme/other' is not an identifier"),
        ({"tenant_id": ".."}, "tenant_id '..' is not an identifier"),
        ({"tenant_id": " acme"}, "tenant_id ' acme' is not an identifier"),
        ({"tenant_id": "acme\n"}, "tenant_id 'acme\\n' is not an identifier"),
        (
            {"tenant_id": "ａｃｍｅ"},
            "tenant_id 'ａｃｍｅ' is not an identifier",
        ),  # fullwidth look-alike
        ({"tenant_id": "tenant=x"}, "tenant_id 'tenant=x' is not an identifier"),
        ({"tenant_id": "a" * 129}, "tenant_id"),
        ({"id": ["P1"]}, "product id is a list, not an identifier"),
        ({"id": True}, "product id is a bool, not an identifier"),
    ],
)
def test_unusable_source_rows_are_rejected_with_a_reason(changes, reason):
    outcome = validate_sale(good_row(**changes))
    assert isinstance(outcome, Rejected) and outcome.reason.startswith(reason)


@pytest.mark.parametrize(
    ("raw", "price"),
    [
        (Decimal("12.50"), 12.5),
        (12, 12.0),
        (12.5, 12.5),
        ("12.50", 12.5),
        (" 12.50 ", 12.5),
        ("12", 12.0),
        ("12.", 12.0),
        (".5", 0.5),
        ("+3.25", 3.25),
        ("0", 0.0),
        (Decimal("1000000"), 1e6),
    ],
)
def test_prices_accepted_are_plain_decimals_and_database_numbers(raw, price):
    assert validate_sale(good_row(sold_price=raw))["sold_price"] == price


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("1_000", "unparseable"),
        ("1,000.00", "unparseable"),
        ("1e3", "unparseable"),
        ("$12", "unparseable"),
        ("0x1F", "unparseable"),
        ("Infinity", "unparseable"),
        ("nan", "unparseable"),
        ("١٢", "unparseable"),
        ("12.5.1", "unparseable"),
        ("", "unparseable"),
        ("- 5", "unparseable"),
        (float("inf"), "non-finite"),
        (float("nan"), "non-finite"),
        (Decimal("sNaN"), "non-finite"),
        (True, "unparseable"),
        ([12], "unparseable"),
        ("-0.01", "negative"),
        ("1000000.01", "implausible"),
        (Decimal("1E+30"), "implausible"),
    ],
)
def test_anything_else_a_price_could_be_spelled_as_is_quarantined(raw, reason):
    outcome = validate_sale(good_row(sold_price=raw))
    assert isinstance(outcome, Rejected) and reason in outcome.reason


def test_text_values_are_kept_as_the_source_holds_them():
    odd = " \u2028Caf\u00e9\u2029 \u05e9\u05dc\u05d5\u05dd\u0085 "
    sale = validate_sale(good_row(category=odd, brand="   ", description=odd * 10_000))
    assert sale["category"] == odd and sale["brand"] is None and sale["description"] == odd * 10_000


def test_a_product_sold_twice_in_a_day_keeps_its_latest_sale_and_quarantines_the_rest():
    from smartgo_analytics.core.sales import VALID_SALES_SCHEMA, keep_latest_sale

    def row(pid, hour, price):
        return {
            **validate_sale(good_row(id=pid, sold_date=datetime(2025, 1, 15, hour, tzinfo=UTC))),
            "sold_price": price,
        }

    rows = [
        row("A", 9, 1.0),
        row("B", 9, 2.0),
        row("A", 17, 3.0),
        row("A", 11, 4.0),
        row("C", 8, 5.0),
        row("C", 8, 6.0),
    ]
    kept, rejected = keep_latest_sale(pa.Table.from_pylist(rows, schema=VALID_SALES_SCHEMA))
    assert sorted(
        zip(
            kept.column("product_id").to_pylist(),
            kept.column("sold_price").to_pylist(),
            strict=True,
        )
    ) == [
        ("A", 3.0),
        ("B", 2.0),
        ("C", 6.0),  # C: a tie, the row read last
    ]
    assert sorted(r.product_id for r in rejected) == ["A", "A", "C"]
    unique = pa.Table.from_pylist(rows[1:2], schema=VALID_SALES_SCHEMA)
    assert keep_latest_sale(unique) == (unique, [])


def test_a_valid_row_is_normalised_to_utc_and_float_price():
    paris = timezone(timedelta(hours=1))
    sale = validate_sale(good_row(sold_date=datetime(2025, 1, 15, 0, 30, tzinfo=paris)))
    assert (
        sale["sold_date"] == datetime(2025, 1, 14, 23, 30, tzinfo=UTC)
        and sale["sold_price"] == 12.5
    )


def test_season_is_meteorological_and_quarter_is_calendar():
    assert [season_of(m) for m in (12, 1, 3, 6, 9, 11)] == [
        "winter",
        "winter",
        "spring",
        "summer",
        "autumn",
        "autumn",
    ]
    assert season_of(1, "southern") == "summer"
    assert [quarter_of(m) for m in (1, 3, 4, 12)] == ["Q1", "Q1", "Q2", "Q4"]


def test_decimals_become_exact_integers_floats_or_counted_nulls():
    assert (
        decimal_to_json(Decimal("12345678901234567890123456789012345678"))
        == 12345678901234567890123456789012345678
    )
    assert decimal_to_json(Decimal("2.50")) == 2.5 and isinstance(
        decimal_to_json(Decimal("3.00")), int
    )
    item, nulls = plain_value(
        {
            "a": Decimal("NaN"),
            "b": [Decimal("Infinity"), Decimal(1)],
            "c": {"d": Decimal("-Infinity")},
        }
    )
    assert item == {"a": None, "b": [None, 1], "c": {"d": None}}
    assert nulls == {
        ".a: non-finite number": 1,
        ".b: non-finite number": 1,
        ".c.d: non-finite number": 1,
    }


def test_ndjson_keeps_field_order_and_utf8_and_refuses_nan():
    data = encode_ndjson([{"b": 1, "a": "東京"}], ["a", "b"])
    assert data == '{"a":"東京","b":1}\n'.encode()
    assert decode_ndjson(data) == [{"a": "東京", "b": 1}]
    with pytest.raises(ValueError):
        encode_ndjson([{"a": float("nan")}], ["a"])
    with pytest.raises(ValueError):
        decode_ndjson(b'{"a":1}\n[1]\n')


def test_ndjson_ends_a_record_at_newline_only_whatever_a_string_holds():
    odd = "a\u2028b\u2029c\u0085d\x1ce\x0bf\x0cg\rh\x00i\u200fאבג\n"
    lone = "broken \ud83d half of an emoji, and \udc00 the other"
    records = [{"s": odd}, {"s": "x"}, {"s": lone}, {"s": "é" * 400_000}]
    data = encode_ndjson(records, ["s"])
    assert data.count(b"\n") == 4
    assert decode_ndjson(data) == records


def test_values_are_coerced_to_the_declared_type_or_nulled_with_why():
    assert coerce("12", "number") == (None, "str where a number belongs")
    assert coerce(3.0, "integer") == (3, None)
    assert coerce(3.5, "integer") == (None, "fraction where an integer belongs")
    assert coerce(7, "string") == ("7", None)
    assert coerce(None, "number") == (None, "missing")
    assert coerce(23187, "number") == (23187.0, None) and isinstance(
        coerce(23187, "number")[0], float
    )
    assert coerce(10**400, "number") == (None, "number too large for a float")


def test_a_value_read_back_with_another_json_type_than_declared_is_a_problem():
    spec = DATASETS_BY_NAME["store_summaries"]
    records = [
        {"date": "2025-01-01", "total_revenue": 23187, "transaction_count": 3.0, "store_id": None}
    ]
    assert type_problems(spec, records) == Counter(
        {
            "total_revenue: int where number is declared": 1,
            "transaction_count: float where integer is declared": 1,
        }
    )
    assert not type_problems(spec, [{"date": "d", "total_revenue": 1.0, "transaction_count": 3}])


def test_ten_years_of_days_fit_one_manifest_and_every_day_is_read():
    start = datetime(2026, 1, 1)
    days = [(start + timedelta(days=n)).date().isoformat() for n in range(3653)]
    plan = plan_manifest(days, [], days, current_month="2035-12")
    months = [m for kind, m in plan.files if kind == "month"]
    current = [d for kind, d in plan.files if kind == "day"]
    assert len(plan.files) <= MANIFEST_FILE_LIMIT and len(months) == 119
    # Every day is in exactly one named file: its month's, or its own in the current month.
    assert sorted(d for d in days if d[:7] in months) + current == days
    assert plan.months_to_write == months


def test_a_finished_month_is_written_again_only_when_one_of_its_days_was_exported():
    days = ["2025-01-30", "2025-01-31", "2025-02-01", "2025-03-02"]
    plan = plan_manifest(days, ["2025-01", "2025-02", "2024-12"], ["2025-02-01"], "2025-03")
    assert plan.months_to_write == ["2025-02"]
    assert plan.months_to_remove == ["2024-12"]  # no days left in it
    assert plan.files == [("month", "2025-01"), ("month", "2025-02"), ("day", "2025-03-02")]
    # A month that has just finished, whose file was never written, gets one.
    assert plan_manifest(days, ["2025-01", "2025-02"], [], "2025-04").months_to_write == ["2025-03"]


def test_top_products_keeps_twenty_by_revenue_with_ties_broken_by_id():
    items = [
        {
            "GSI1SK": f"PRODUCT#P{n:02d}",
            "product_id": f"P{n:02d}",
            "revenue": 100 if n < 25 else 1000 + n,
        }
        for n in range(30)
    ]
    build = build_dataset(DATASETS_BY_NAME["top_products"], items, "2025-01-15")
    ids = [r["product_id"] for r in build.records]
    assert ids[:5] == ["P29", "P28", "P27", "P26", "P25"] and ids[5:] == [
        f"P{n:02d}" for n in range(15)
    ]
    assert [r["rank"] for r in build.records] == list(range(1, 21))


def test_item_kinds_follow_the_single_table_layout():
    assert item_kind({"GSI1SK": "STORE#S01"}) == "store"
    assert item_kind({"GSI1SK": "INSIGHT#TREND#t1"}) == "insight:TREND"
    assert item_kind({"GSI1SK": "COMPANY"}) == "company"
    assert item_kind({"GSI1SK": "SOMETHING"}) is None


@pytest.mark.parametrize(
    ("url", "address", "reason"),
    [
        ("http://a.example/x", "127.0.0.1", "loopback"),
        ("http://a.example/x", "10.1.2.3", "private"),
        ("http://a.example/x", "169.254.169.254", "link-local"),
        ("http://a.example/x", "224.0.0.1", "multicast"),
        ("http://a.example/x", "240.0.0.1", "reserved"),
        ("http://a.example/x", "::ffff:192.168.0.1", "private"),
        ("ftp://a.example/x", "93.184.216.34", "scheme 'ftp'"),
        ("file:///etc/passwd", "93.184.216.34", "scheme 'file'"),
    ],
)
def test_unsafe_urls_are_refused(url, address, reason):
    with pytest.raises(UnsafeUrl, match=reason):
        check_url(url, resolver=lambda host, port: [address])


def test_public_and_allowlisted_hosts_are_allowed():
    check_url("https://cdn.example/x.jpg", resolver=lambda h, p: ["93.184.216.34"])
    check_url(
        "http://images.internal/x.jpg",
        allowlist=["images.internal"],
        resolver=lambda h, p: ["10.0.0.5"],
    )


def test_retries_back_off_exponentially_with_jitter_and_stop():
    delays = backoff_delays(3, 1.0)
    assert all(
        lo <= d <= hi for d, (lo, hi) in zip(delays, [(0.5, 1), (1, 2), (2, 4)], strict=True)
    )
    attempts, slept = [], []

    def flaky():
        attempts.append(1)
        raise TimeoutError

    with pytest.raises(TimeoutError):
        call_with_retries(flaky, lambda e: isinstance(e, TimeoutError), 3, 1.0, sleep=slept.append)
    assert len(attempts) == 4 and len(slept) == 3


def test_images_titan_would_refuse_are_downscaled_and_bombs_and_junk_refused():
    big = png(size=(3000, 1000))
    prepared = prepare_for(big, TITAN.images)
    # Shrunk by whole pixels (1/2 here) to the largest size within Titan's 2048 px, shape kept.
    assert prepared.resized and (prepared.width, prepared.height) == (1500, 500)
    assert prepare_for(png(), TITAN.images).resized is False
    with pytest.raises(BadImage, match="decompression bomb"):
        prepare_for(bomb_png(), TITAN.images)
    with pytest.raises(BadImage, match="not an image"):
        prepare_for(b"<html></html>", TITAN.images)
    with pytest.raises(BadImage, match="corrupt"):
        prepare_for(png()[:60], TITAN.images)


def test_the_local_embedder_is_deterministic_and_puts_similar_pictures_close():
    books_a, books_b = (
        draw_product_image("Books", "Penguin", 0),
        draw_product_image("Books", "Penguin", 1),
    )
    jewelry = draw_product_image("Jewelry", "Cartier", 0)
    a, b, c = (np.array(visual_features(image)) for image in (books_a, books_b, jewelry))
    assert len(a) == 1024 and np.isclose(np.linalg.norm(a), 1.0)
    assert np.array_equal(visual_features(books_a), visual_features(books_a))
    assert a @ b > a @ c
    assert len(visual_features(books_a, 256)) == 256


def test_reused_rows_get_the_tables_vector_and_a_vector_gone_since_is_an_error():
    def result(product_id, sha, vector=None, reused=False, error=None):
        return {
            "product_id": product_id,
            "image_s3_key": None,
            "image_sha256": sha,
            "embedding_model": "m",
            "embedding_vector": vector,
            "embedding_error": error,
            "embedding_reused": reused,
            "image_url": None,
            "image_etag": None,
        }

    fresh = np.array([1, 2, 3], dtype=np.float32)
    batch = embeddings_batch(
        [
            result("A", "a", fresh),
            result("B", "b", reused=True),
            result("C", "gone", reused=True),
            result("D", None, error="HTTP 404"),
        ]
    )

    filled = with_reused_vectors(
        pa.Table.from_batches([batch]), {"b": np.array([4, 5, 6], np.float32)}
    )

    assert filled.column("embedding_vector").to_pylist() == [[1, 2, 3], [4, 5, 6], None, None]
    assert filled.column("embedding_error").to_pylist() == [
        None,
        None,
        REUSED_VECTOR_GONE,
        "HTTP 404",
    ]
    assert filled.schema == batch.schema


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_a_pace_gives_calls_slots_a_quota_apart_and_widens_them_while_throttled():
    clock = FakeClock()
    pace = Pace(requests_per_minute=60 / Pace.HEADROOM)  # one call a second
    for _ in range(3):
        pace.wait(clock, clock.sleep)
    assert clock.slept == [1.0, 1.0]  # the first call goes at once

    pace.answered(throttled=True, clock=clock)
    pace.wait(clock, clock.sleep)
    assert clock.slept[-1] == pytest.approx(1.25)  # the next slot pushed back a wider interval
    for _ in range(200):
        pace.answered(throttled=False, clock=clock)
    clock.slept.clear()
    pace.wait(clock, clock.sleep)
    pace.wait(clock, clock.sleep)
    assert clock.slept[-1] == pytest.approx(1.0)  # back to the quota, not beyond it
    report = pace.report()
    assert (report.calls, report.throttled) == (6, 1)


def test_a_pace_spaces_calls_by_the_tokens_their_answers_say_they_were_charged():
    clock = FakeClock()
    pace = Pace(tokens_per_minute=600 / Pace.HEADROOM)  # ten tokens a second

    def sleep_while_the_first_call_is_answered(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.slept) == 1:  # another thread's answer comes while this call waits
            pace.answered(throttled=False, tokens=20, clock=clock)

    pace.wait(clock, clock.sleep)  # the first call goes at once, alone: nothing tells its cost
    pace.wait(clock, sleep_while_the_first_call_is_answered)
    # It waited for the first answer (a short poll), then for the 20 tokens it reported: 2 s.
    assert clock.slept == [0.01, pytest.approx(1.99)]
    pace.answered(throttled=False, tokens=40, clock=clock)  # dearer than the 20 expected
    clock.slept.clear()
    pace.wait(clock, clock.sleep)
    assert clock.slept == [pytest.approx(4.0)]  # 2 s expected, moved by the 2 s of the surprise
    report = pace.report()
    assert (report.calls, report.tokens) == (3, 60)
    with pytest.raises(ValueError, match="tokens per minute must be positive"):
        Pace(tokens_per_minute=-1)


def test_a_probe_whose_answer_never_comes_lets_another_call_go_after_its_patience():
    clock = FakeClock()
    pace = Pace(tokens_per_minute=600)
    pace.wait(clock, clock.sleep)  # the probe; say its worker process dies before the answer

    def ten_second_polls(seconds: float) -> None:
        clock.sleep(10.0 if seconds == 0.01 else seconds)

    pace.wait(clock, ten_second_polls)
    assert clock.slept == [10.0] * 6  # held while the probe could still answer, then let go
    assert Pace.PROBE_PATIENCE_S == 60.0


def test_a_pace_without_a_quota_only_counts():
    clock = FakeClock()
    pace = Pace()
    for _ in range(5):
        pace.wait(clock, clock.sleep)
    pace.answered(throttled=True, clock=clock)
    assert clock.slept == [] and pace.report().calls == 5 and pace.report().throttled == 1
    with pytest.raises(ValueError, match="positive"):
        Pace(requests_per_minute=0)


def test_batched_calls_from_many_threads_are_answered_together_each_with_its_own_answer():
    asked: list[dict] = []

    def answer(batch: dict) -> dict:
        asked.append(batch)
        return {key: f"{key}:{item}" for key, item in batch.items() if key != "absent"}

    batched = Batched(answer, wait_s=0.05)
    start = threading.Barrier(20)

    def call(n: int):
        start.wait()
        return batched(f"k{n % 10}", n % 10)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(call, range(20)))
    assert answers == [f"k{n % 10}:{n % 10}" for n in range(20)]
    assert sum(len(batch) for batch in asked) == 10 and len(asked) < 10  # each key asked once
    assert batched("absent") is None


def test_a_batch_whose_answer_fails_fails_every_caller_in_it():
    def answer(batch: dict) -> dict:
        raise ConnectionError("table unreachable")

    batched = Batched(answer, wait_s=0.05)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batched, n) for n in range(4)]
    for future in futures:
        with pytest.raises(ConnectionError, match="unreachable"):
            future.result()


def test_reused_vectors_come_from_the_store_or_else_from_the_older_rows_which_are_then_stored():
    store = {"a": np.ones(3, np.float32)}
    older_reads = []

    def older():
        older_reads.append(1)
        return {"b": np.full(3, 2, np.float32)}

    with ReusedVectors(
        stored=lambda shas: {s: store[s] for s in shas if s in store},
        older=older,
        store=store.update,
    ) as reused:
        found = reused(["a", "b", "c"])
        assert sorted(found) == ["a", "b"] and found["b"].tolist() == [2, 2, 2]
        assert "b" in store  # the next lookup finds it in the store
        reused(["c"])
    assert older_reads == [1]  # the older rows are read once


def test_write_behind_writes_full_batches_as_they_fill_and_the_rest_on_flush():
    written: list[dict] = []
    behind = WriteBehind(written.append, most=3)
    for n in range(7):
        behind.add(f"k{n}", n)
    assert [sorted(batch) for batch in written] == [["k0", "k1", "k2"], ["k3", "k4", "k5"]]
    assert behind.pending("k6") == 6 and behind.pending("k0") is None  # written: not pending
    behind.flush()
    assert written[-1] == {"k6": 6} and behind.pending("k6") is None


def test_a_urls_later_sales_are_deferred_and_take_the_first_sales_vector_or_error():
    sales = [("A", "x"), ("B", "y"), ("C", "x"), ("D", "x")]
    marked, repeated = mark_deferred([Sale(p, "t", u) for p, u in sales])
    assert [sale.deferred for sale in marked] == [False, False, True, True]
    assert repeated == {"x"}

    vector = np.ones(3, np.float32)
    first = {
        "image_sha256": "s",
        "embedding_vector": vector,
        "embedding_reused": False,
        "embedding_error": None,
    }
    later = {
        "image_sha256": "s",
        "embedding_vector": None,
        "embedding_reused": False,
        "embedding_error": None,
    }
    assert from_first_sale(later, first)["embedding_vector"] is vector
    failed = {**first, "embedding_vector": None, "embedding_error": "embedding failed: x"}
    assert from_first_sale(later, failed)["embedding_error"] == "embedding failed: x"
    # Other bytes at the same URL by the time the later sale downloaded it: not the first's vector.
    changed = from_first_sale({**later, "image_sha256": "t"}, first)
    assert changed["embedding_vector"] is None and "other bytes" in changed["embedding_error"]


def test_demo_prices_follow_brand_condition_and_the_model_only_the_picture_shows():
    sales = [s for s in products_for_day(date(2025, 1, 15), "http://cdn", 5_000) if s.sold_price]
    ratios: list[float] = []
    for s in sales:
        if "/products/" not in s.image_url or "/missing-" in s.image_url:
            continue
        variant = int(s.image_url.rsplit("-", 1)[1].removesuffix(".jpg"))
        expected = demo_price(s.category, s.brand, s.condition, variant, noise=1.0)
        ratios.append(float(s.sold_price / expected))
    # The price is the model's, up to noise of 15% (log scale): a median ratio of 1.
    assert statistics.median(ratios) == pytest.approx(1.0, abs=0.03)
    assert 0.1 < statistics.stdev(math.log(r) for r in ratios) < 0.2
    new, fair = (demo_price("Toys", "LEGO", c, 1, 1.0) for c in ("New", "Fair"))
    cheap, dear = (demo_price("Toys", "LEGO", "Good", v, 1.0) for v in (0, 2))
    assert new / fair == 2 and float(dear / cheap) == pytest.approx(1.5 / 0.7, rel=0.01)


def segment_of(days: dict, tmp_path, segment=None, index=None, items=None, old=None):
    """A segment built a day at a time: {day: vectors}, each vector's product id its day and row.
    Its graph is built from the first day's vectors, the others added to it."""
    from smartgo_analytics.similarity.graph import built_graph, graph_with_day
    from smartgo_analytics.similarity.manifest import Segment
    from smartgo_analytics.similarity.segments import (
        ITEM_COLUMNS,
        ITEM_SCHEMA,
        SpooledVectors,
        day_keys,
        segment_vectors,
    )

    items = items if items is not None else ITEM_SCHEMA.empty_table()
    for day, vectors in days.items():
        start, _ = day_keys(day)
        day_items = pa.table(
            {
                "key": pa.array(np.arange(start, start + len(vectors), dtype=np.uint64)),
                **{
                    name: [
                        f"{day}-{row}" if name == "product_id" else None
                        for row in range(len(vectors))
                    ]
                    for name in ITEM_COLUMNS
                },
            }
        ).cast(ITEM_SCHEMA)
        path = tmp_path / f"vectors-{day}-{len(items)}.f16"
        items, replaced = segment_vectors(items, old, day, day_items, vectors, path)
        old = SpooledVectors(path, items.num_rows, 8, np.float16)
        if index is None:
            index, centre = built_graph(items.column("key").to_numpy(), old, 1)
            segment = Segment("s", {}, centre, items.num_rows)
        else:
            keys = day_items.column("key").to_numpy()
            index = graph_with_day(index, segment.centre, replaced, keys, vectors, 1)
        segment.days[day.isoformat()] = len(vectors)
    return segment, index, items, old


def test_a_segment_keeps_its_rows_in_key_order_through_a_backfill_and_a_replaced_day(tmp_path):
    from smartgo_analytics.core.vectors import unit
    from smartgo_analytics.similarity.index import TenantIndex
    from smartgo_analytics.similarity.manifest import Manifest
    from smartgo_analytics.similarity.segments import write_items

    rng = np.random.default_rng(3)
    first, middle, last = date(2025, 5, 1), date(2025, 5, 2), date(2025, 5, 3)
    vectors = {first: rng.standard_normal((3, 8)), last: rng.standard_normal((4, 8))}
    (tmp_path / "a").mkdir()
    built = segment_of(vectors, tmp_path / "a")
    # A backfilled day lands between the two; then the last day again, with two vectors.
    vectors[middle] = rng.standard_normal((2, 8))
    built = segment_of({middle: vectors[middle]}, tmp_path / "a", *built)
    vectors[last] = rng.standard_normal((2, 8))
    segment, index, items, old = segment_of({last: vectors[last]}, tmp_path / "a", *built)

    ids = items.column("product_id").to_pylist()
    assert ids == [f"{d}-{r}" for d in (first, middle, last) for r in range(len(vectors[d]))]
    assert len(index) == 3 + 2 + 2 and items.column("key").to_numpy().tolist() == sorted(
        items.column("key").to_numpy().tolist()
    )
    expected = np.concatenate([unit(vectors[d]) for d in (first, middle, last)])
    assert np.allclose(old.read(0, len(ids)), expected, atol=2e-3)  # float16 rows in key order

    index_path = tmp_path / "segment.usearch"
    index.save(str(index_path))
    write_items(items, tmp_path / "segment.parquet")
    assert segment.days == {first.isoformat(): 3, last.isoformat(): 2, middle.isoformat(): 2}
    # The manifest keeps the segment's centre: the graph is searched against the same one.
    manifest = Manifest.from_json(Manifest("t", 8, [segment]).to_json())
    assert np.allclose(manifest.segments[0].centre, segment.centre, atol=1e-6)
    opened = TenantIndex(manifest, {"s": (index_path, tmp_path / "segment.parquet", old.path)})
    keys, similarities = opened.search(vectors[middle][1], 3)
    assert opened.items(keys[0]).column("product_id")[0].as_py() == f"{middle}-1"
    assert similarities[0][0] == pytest.approx(1.0, abs=1e-3) and list(similarities[0]) == sorted(
        similarities[0], reverse=True
    )
    assert np.allclose(opened.vector(int(keys[0][0])), unit(vectors[middle][1:2])[0], atol=2e-3)
    opened.close()


def test_weighted_quantiles_follow_the_weights():
    from smartgo_analytics.comparables import weighted_quantiles

    assert weighted_quantiles(np.array([10.0, 20, 30]), np.ones(3), [0.5]) == [20.0]
    # Nearly all the weight on 30: the median moves to it.
    assert weighted_quantiles(np.array([10.0, 20, 30]), np.array([0.01, 0.01, 10]), [0.5]) == [
        pytest.approx(30.0, abs=0.1)
    ]
    low, high = weighted_quantiles(np.array([1.0, 2, 3, 4]), np.ones(4), [0.25, 0.75])
    assert 1 <= low < high <= 4


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_an_outage_is_waited_out_and_reported_and_one_longer_than_the_allowance_is_named():
    from smartgo_analytics.core.outage import Outage, OutageTooLong, Transient

    time = FakeTime()
    outage = Outage("CDN", allowance_s=30, clock=time.clock, sleep=time.sleep)
    answers = iter([Transient("HTTP 503")] * 4 + ["bytes"])

    def call():
        answer = next(answers)
        time.now += 1  # each call takes a second
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert outage.call(call) == "bytes"
    report = outage.report()
    assert (report.retries, report.requeued, report.outages) == (4, 1, 1)
    assert 4 < report.outage_s < 30

    def down():
        time.now += 1
        raise Transient("connection refused")

    outage = Outage("CDN", allowance_s=30, clock=time.clock, sleep=time.sleep)  # never answered
    with pytest.raises(OutageTooLong) as raised:
        outage.call(down)
    assert raised.value.dependency == "CDN" and raised.value.down_s > 30
    assert "CDN was unavailable for" in str(raised.value) and "connection refused" in str(
        raised.value
    )


def test_a_call_that_keeps_failing_while_others_get_through_fails_on_its_own():
    from smartgo_analytics.core.outage import Outage, Transient

    time = FakeTime()
    outage = Outage("CDN", allowance_s=600, own_retries=2, clock=time.clock, sleep=time.sleep)
    tries = []

    def broken_url():
        tries.append(time.now)
        assert outage.call(lambda: "another image") == "another image"  # others succeed meanwhile
        raise Transient("HTTP 503 (after 3 retries)")

    with pytest.raises(Transient, match="HTTP 503"):
        outage.call(broken_url)
    # Tried with its own backoff for the 30 s window, not for the ten-minute allowance.
    assert 3 < len(tries) <= 20 and 30 <= tries[-1] < 60, tries


def test_an_outage_in_the_middle_of_the_day_is_waited_out_by_the_calls_it_met():
    from smartgo_analytics.core.outage import Outage, OutageTooLong, Transient

    time = FakeTime()
    outage = Outage("Bedrock", allowance_s=600, clock=time.clock, sleep=time.sleep)
    down = [0.0, 0.0]  # Bedrock is down for everyone from down[0] to down[1]

    def bedrock():
        time.now += 1
        if down[0] <= time.now < down[1]:
            raise Transient("HTTP 503")
        return "vector"

    for _ in range(50):  # the morning: every call answered
        assert outage.call(bedrock) == "vector"
    down[:] = [time.now, time.now + 90]  # then down for a minute and a half
    assert outage.call(bedrock) == "vector"  # not this sale's error, though it failed 90 s
    assert outage.report().outages == 1 and outage.report().outage_s >= 89

    # The day's last call, alone, to a URL that always fails while the service is up: once its
    # own window has passed, a call that succeeded before is made again; it answers, so the
    # failure is the call's own.
    def broken_url():
        time.now += 1
        raise Transient("HTTP 503 for this URL")

    started = time.now
    with pytest.raises(Transient, match="for this URL"):
        outage.call(broken_url)
    assert 30 <= time.now - started < 60

    # A host no call has reached yet (a few sales name it) is given its shorter allowance.
    unproven = Outage(
        "CDN gone.example",
        allowance_s=600,
        unproven_allowance_s=30,
        clock=time.clock,
        sleep=time.sleep,
    )
    started = time.now

    def refused():
        time.now += 1
        raise Transient("connection refused")

    with pytest.raises(OutageTooLong) as raised:
        unproven.call(refused)
    assert 30 < time.now - started < 60 and raised.value.allowance_s == 30


def test_a_full_disk_fails_at_once_naming_the_directory_what_is_free_and_the_setting():
    from dagster import Failure

    from smartgo_analytics.assets.policies import disk_full_is_named

    with pytest.raises(Failure) as raised, disk_full_is_named():
        with open("/dev/full", "wb") as full:  # a real ENOSPC: every write to it fails so
            full.write(b"x" * 65536)
    failure = raised.value
    assert not failure.allow_retries
    import tempfile

    assert f"no space left on the device of {tempfile.gettempdir()}" in failure.description
    assert "bytes free" in failure.description and "set TMPDIR" in failure.description


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5_000), st.integers(1, 300), st.integers(1, 300))
def test_batch_jobs_never_fall_below_bedrocks_least_records(images, max_records, min_records):
    from smartgo_analytics.steps.reembedding import job_records

    assume(max_records >= min_records)
    jobs, left = [], images
    while (take := job_records(left, max_records, min_records)) > 0:
        jobs.append(take)
        left -= take
    assert all(min_records <= job <= max_records for job in jobs)
    assert left < min_records  # what goes on demand
    # Only a quota under twice the least can leave a tail on demand once a job was possible.
    if jobs and left and 2 * min_records <= max_records:
        raise AssertionError(f"{images} images: jobs {jobs} left {left} on demand")
