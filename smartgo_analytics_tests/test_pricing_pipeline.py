"""The pricing pipeline against real servers: embedded Postgres, moto S3 and DynamoDB over HTTP,
a Bedrock-compatible server and a hostile image CDN, all on 127.0.0.1."""

import hashlib
import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import boto3
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, materialize

from smartgo_analytics.assets.price_bands import price_bands
from smartgo_analytics.assets.pricing_intelligence import (
    smartgo_sales,
)
from smartgo_analytics.assets.quicksight import price_bands_dataset
from smartgo_analytics.core.embedding_day import Sale
from smartgo_analytics.core.pacing import Pace
from smartgo_analytics.embedding.sale_work import SaleLimits, SaleWork
from smartgo_analytics.embedding.work import ProcessRule, SalesRun
from smartgo_analytics.embedding.workers import WorkerFailed, worker_context
from smartgo_analytics.layout import asset_output_key
from smartgo_analytics.local.stack import create_progress_table
from smartgo_analytics.resources.dynamodb import (
    ExportProgressTracker,
    ImageVectors,
)
from smartgo_analytics.resources.embeddings import BedrockEmbedder, LocalVisualEmbedder
from smartgo_analytics.resources.iceberg import KnownVectors
from smartgo_analytics.resources.images import ImageFetcher
from smartgo_analytics.resources.object_store import LocalObjectStore
from smartgo_analytics.resources.parquet_io import ParquetIOManager
from smartgo_analytics.resources.postgres import SmartGoDatabase
from smartgo_analytics.resources.quicksight import QuickSightExport
from smartgo_analytics_tests import servers
from smartgo_analytics_tests.pipeline import ASSETS, day_rows, insert_products, resources, run, sale

HOSTILE = {
    "missing": ("/missing.png", "HTTP 404"),
    "slow": ("/slow.png", "timed out"),
    "huge": ("/huge.png", "too large"),
    "endless": ("/endless.png", "too large"),
    "gzip-bomb": ("/gzip-bomb.png", "too large: over 10485760 bytes (gzip)"),
    "brotli": ("/brotli.png", "unsupported content encoding 'br'"),
    "page": ("/page.png", "not an image"),
    "corrupt": ("/corrupt.png", "corrupt image"),
    "bomb": ("/bomb.png", "decompression bomb"),
    "to-loopback": ("/to-loopback.png", "loopback address"),
    "to-metadata": ("/to-metadata.png", "link-local address"),
    "to-private": ("/to-private.png", "private address"),
    "loop": ("/loop.png", "more than 3 redirects"),
}


def stored_ids(res, asset_name, day):
    """The product ids of an asset's stored output, in their stored order."""
    path = res["object_store"].local_path(asset_output_key([asset_name], day))
    try:
        return pq.read_table(path, columns=["product_id"]).column("product_id").to_pylist()
    finally:
        res["object_store"].release(path)


def check(result, name):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


def test_hostile_images_become_per_sale_errors_and_the_day_completes(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, tmp_path
):
    day = "2025-06-01"
    good = [sale(f"OK-{n}", day, f"{cdn}/ok.png") for n in range(60)]
    bad = [sale(f"BAD-{name}", day, f"{cdn}{path}") for name, (path, _) in HOSTILE.items()]
    schemes = [
        sale("BAD-file", day, "file:///etc/passwd"),
        sale("BAD-gopher", day, "gopher://localhost/x"),
    ]
    flaky = [sale("FLAKY", day, f"{cdn}/flaky.png"), sale("GZIPPED", day, f"{cdn}/gzipped.png")]
    insert_products(stack.postgres_uri, good + bad + schemes + flaky)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)

    result = run(res, day, max_error_ratio=0.5, own_failure_window_s=3)

    rows = day_rows(res, day)
    assert len(rows) == len(good) + len(bad) + len(schemes) + len(flaky)
    for name, (_, reason) in HOSTILE.items():
        row = rows[f"BAD-{name}"]
        assert reason in row["embedding_error"], (name, row["embedding_error"])
        assert row["embedding_vector"] is None
    assert "scheme 'file'" in rows["BAD-file"]["embedding_error"]
    assert "scheme 'gopher'" in rows["BAD-gopher"]["embedding_error"]
    for name in ("FLAKY", "GZIPPED"):
        assert rows[name]["embedding_error"] is None and len(rows[name]["embedding_vector"]) == 1024
    assert all(len(rows[f"OK-{n}"]["embedding_vector"]) == 1024 for n in range(60))
    ratio = check(result, "embedding_error_ratio_within_budget")
    assert ratio.passed and ratio.metadata["errors"].value == 15
    assert {e.partition for e in result.get_asset_check_evaluations()} == {
        day
    }  # each names its day


def test_a_day_over_the_error_budget_is_blocked_before_the_iceberg_write(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, tmp_path
):
    day = "2025-06-06"
    insert_products(
        stack.postgres_uri,
        [sale("B-0", day, f"{cdn}/ok.png"), sale("B-1", day, f"{cdn}/missing.png")],
    )
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)

    result = run(res, day, raise_on_error=False)

    assert not result.success
    ratio = check(result, "embedding_error_ratio_within_budget")
    assert not ratio.passed and ratio.metadata["error_ratio"].value == 0.5
    assert day_rows(res, day) == {}
    # What the demo's last line says of such a day: the check's own description, whole.
    from smartgo_analytics.cli.stack import _failure

    assert _failure(result) == (
        "product_image_embeddings check embedding_error_ratio_within_budget: "
        "1 of 2 sales have no vector (50.0%, budget 5.0%)"
    )


def test_a_day_within_budget_writes_vectors_images_and_progress(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, tmp_path
):
    day = "2025-06-02"
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    create_progress_table(dynamodb, "progress-test")
    insert_products(
        stack.postgres_uri,
        [sale(f"P-{n}", day, f"{cdn}/ok.png") for n in range(30)]
        + [
            sale("P-missing", day, f"{cdn}/missing.png"),
            sale("P-noprice", day, f"{cdn}/ok.png", sold_price=None),
            sale("P-unsold", day, f"{cdn}/ok.png", status="AVAILABLE"),
            sale("P-nextday", day, f"{cdn}/ok.png", sold_date=datetime(2025, 6, 3, tzinfo=UTC)),
        ],
    )
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path, progress_table="progress-test")

    result = run(res, day)

    rows = day_rows(res, day)
    assert set(rows) == {f"P-{n}" for n in range(30)} | {"P-missing"}
    row = rows["P-0"]
    assert (
        row["season"] == "summer"
        and row["quarter"] == "Q2"
        and (row["year"], row["month"]) == (2025, 6)
    )
    assert (
        row["embedding_id"].startswith("smartgo-P-0-")
        and row["embedding_model"] == "amazon.titan-embed-image-v1"
    )
    key = row["image_s3_key"].removeprefix(f"s3://{s3_bucket}/")
    assert key == f"images/smartgo/carousel-labs/P-0/{row['image_sha256']}.png"
    s3 = boto3.client("s3", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1")
    assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()[:4] == b"\x89PNG"
    # All 30 sales share one image: one embedding call.
    assert bedrock_calls.calls == 1
    assert check(result, "no_quarantined_rows").passed is False
    assert check(result, "iceberg_rows_match_source").passed
    item = dynamodb.get_item(
        TableName="progress-test", Key={"PK": {"S": f"EXPORT#{day}"}, "SK": {"S": "METADATA"}}
    )["Item"]
    assert (
        item["status"]["S"] == "COMPLETE"
        and item["errorCount"]["N"] == "1"
        and item["totalCount"]["N"] == "31"
    )
    assert int(item["ttl"]["N"]) > datetime.now(UTC).timestamp() + 89 * 86400


def test_rematerialising_an_unchanged_day_gives_the_same_rows_and_makes_no_embedding_calls(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    day = "2025-06-13"
    for n in range(5):
        cdn_state.images[f"/distinct-{n}.png"] = servers.png((40 * n, 90, 200))
    insert_products(
        stack.postgres_uri, [sale(f"R-{n}", day, f"{cdn}/distinct-{n}.png") for n in range(5)]
    )
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    first_result = run(res, day)
    first = day_rows(res, day)
    first_snapshot = (
        first_result.asset_materializations_for_node("smartgo_sales_iceberg")[0]
        .metadata["snapshot_id"]
        .value
    )
    assert bedrock_calls.calls == 5, bedrock_calls.requests

    bedrock_calls.reset()
    not_modified_before = cdn_state.not_modified
    second_result = run(res, day)

    second = day_rows(res, day)
    assert bedrock_calls.calls == 0
    metadata = second_result.asset_materializations_for_node("product_image_embeddings")[0].metadata
    assert metadata["embedding_calls"].value == 0 and metadata["embeddings_reused"].value == 5
    assert cdn_state.not_modified - not_modified_before == 5  # conditional requests, no bodies
    # The table already holds exactly these rows: no new snapshot, the rows keep their ingestion time.
    written = second_result.asset_materializations_for_node("smartgo_sales_iceberg")[0].metadata
    assert written["day_unchanged"].value and written["rows_written"].value == 0
    assert written["rows"].value == 5 and written["snapshot_id"].value == first_snapshot
    assert second == first
    assert check(second_result, "iceberg_rows_match_source").passed

    # A sale's price is corrected at the source: no image changed, but the day is written again.
    insert_products(
        stack.postgres_uri, [sale("R-4", day, f"{cdn}/distinct-4.png", sold_price="12.5")]
    )
    corrected = run(res, day)
    written = corrected.asset_materializations_for_node("smartgo_sales_iceberg")[0].metadata
    assert bedrock_calls.calls == 0 and not written["day_unchanged"].value
    assert written["rows_written"].value == 5 and written["snapshot_id"].value != first_snapshot
    fourth = day_rows(res, day)
    assert fourth["R-4"]["sold_price"] == 12.5
    assert fourth["R-4"]["embedding_vector"] == first["R-4"]["embedding_vector"]

    # One picture changes behind the same URL: only that one is downloaded and embedded again.
    cdn_state.images["/distinct-2.png"] = servers.png((250, 250, 0))
    bedrock_calls.reset()
    changed = run(res, day)
    third = day_rows(res, day)
    assert bedrock_calls.calls == 1
    assert (
        not changed.asset_materializations_for_node("smartgo_sales_iceberg")[0]
        .metadata["day_unchanged"]
        .value
    )
    assert third["R-2"]["image_sha256"] != first["R-2"]["image_sha256"]
    assert third["R-1"]["image_sha256"] == first["R-1"]["image_sha256"]


def test_bedrock_throttling_is_retried_and_wrong_lengths_are_per_sale_errors(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    day = "2025-06-04"
    from smartgo_analytics_tests.servers import png

    images = {f"/t-{n}.png": png((n * 9, 200 - n * 5, 60), size=(64 + n, 64)) for n in range(24)}
    cdn_state.images.update(images)
    bedrock_calls.throttle_next = 10
    bedrock_calls.wrong_length_for = {hashlib.sha256(images["/t-3.png"]).hexdigest()}
    insert_products(
        stack.postgres_uri, [sale(f"T-{n}", day, f"{cdn}/t-{n}.png") for n in range(24)]
    )
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)

    result = run(res, day)

    rows = day_rows(res, day)
    assert bedrock_calls.calls >= 24 + 10
    assert "7 values, asked for 1024" in rows["T-3"]["embedding_error"]
    assert all(rows[f"T-{n}"]["embedding_error"] is None for n in range(24) if n != 3)
    assert check(result, "embedding_error_ratio_within_budget").passed  # 1 of 24 is 4.2%


ODD_TEXT = (
    "line\u2028para\u2029next\u0085 \u05e9\u05dc\u05d5\u05dd \u202eevil\u202c \U0001f600 \x1f"
)


def test_identifiers_that_are_not_data_are_quarantined_and_every_key_stays_in_its_prefix(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, tmp_path
):
    day = "2025-06-07"
    hostile_ids = [
        "../../staging/evil",
        "P1/../../../quicksight/x",
        "..",
        ".hidden",
        "P 1",
        "P1\n",
        "P1%2F..%2F..",
        "Ｐ１",
        "tenant_id=evil",
        "P" * 129,
        "-rf",
        "P1\\..\\x",
    ]
    hostile_tenants = [
        "../warehouse",
        "acme/other",
        " carousel-labs",
        "carousel-labs ",
        "ACME\u200b",
        "",
    ]
    good = [
        sale(
            f"OK-{n}",
            day,
            f"{cdn}/ok.png",
            category=ODD_TEXT,
            brand="\u202b" + "é" * 5_000,
            description=ODD_TEXT * 20_000,
        )
        for n in range(30)
    ]
    bad = [sale(pid, day, f"{cdn}/ok.png") for pid in hostile_ids]
    bad += [
        sale(f"TENANT-{n}", day, f"{cdn}/ok.png", tenant_id=t)
        for n, t in enumerate(hostile_tenants)
    ]
    insert_products(stack.postgres_uri, good + bad)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)

    result = run(res, day)

    assert result.success
    sales = result.asset_materializations_for_node("smartgo_sales")[0].metadata
    assert sales["quarantined_rows"].value == len(bad)
    quarantine = pq.read_table(
        res["object_store"].local_path(f"staging/quarantine/smartgo_sales/{day}.parquet")
    ).to_pylist()
    assert {q["product_id"] for q in quarantine} == {s["id"] for s in bad}
    assert all(
        "not an identifier" in q["reason"] or q["reason"] == "missing tenant_id" for q in quarantine
    )
    rows = day_rows(res, day)
    assert set(rows) == {s["id"] for s in good}
    assert all(
        r["category"] == ODD_TEXT and r["brand"] == "\u202b" + "é" * 5_000 for r in rows.values()
    )
    staged = pq.read_table(
        res["object_store"].local_path(asset_output_key(["smartgo_sales"], day))
    ).to_pylist()
    assert {r["description"] for r in staged} == {ODD_TEXT * 20_000}
    for key in res["object_store"].list_keys(""):
        parts = key.split("/")
        assert parts[0] in ("images", "staging"), key
        if parts[0] == "images":
            assert len(parts) == 5 and parts[:3] == ["images", "smartgo", "carousel-labs"], key
            assert parts[3] in rows, key


def source_database(stack, name: str, ddl_change: tuple[str, str]) -> str:
    """A database of its own on the embedded server, with the products table changed as a real
    source might have it (no primary key, a text price)."""
    from smartgo_analytics.local.demo_data import PRODUCTS_DDL

    admin = psycopg.conninfo.make_conninfo(stack.postgres_uri, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = psycopg.conninfo.make_conninfo(stack.postgres_uri, dbname=name)
    with psycopg.connect(dsn) as conn:
        conn.execute(PRODUCTS_DDL.replace(*ddl_change))
    return dsn


def sales_only(dsn: str, tmp_path):
    store = LocalObjectStore(lake_dir=str(tmp_path), bucket="lake")
    return store, {
        "sales_source": SmartGoDatabase(dsn=dsn),
        "object_store": store,
        "parquet_io_manager": ParquetIOManager(object_store=store),
        "export_progress": ExportProgressTracker(),
    }


def test_prices_a_source_holds_as_numbers_or_text_are_accepted_or_quarantined_with_the_reason(
    stack, tmp_path
):
    day = "2025-06-09"
    insert = (
        "INSERT INTO smartgo.products VALUES (%s, 'carousel-labs', NULL, NULL, NULL, %s, "
        "'2025-06-09T10:00:00Z', 'https://cdn.example.com/x.png', NULL, 'SOLD')"
    )
    numbers = {
        "NUM-nan": ("NaN", "non-finite sold_price"),
        "NUM-inf": ("Infinity", "non-finite sold_price"),
        "NUM-negative": ("-5", "negative sold_price"),
        "NUM-huge": ("99999999.99", "implausible sold_price above 1000000"),
        "NUM-ok": ("12.50", None),
    }
    texts = {
        "TXT-separators": "1_000",
        "TXT-comma": "1,000.00",
        "TXT-exponent": "1e3",
        "TXT-currency": "$12",
        "TXT-hex": "0x1F",
        "TXT-arabic": "١٢",
        "TXT-infinity": "Infinity",
        "TXT-words": "twelve",
        "TXT-ok": " 12.50 ",
        "TXT-ok-int": "7",
    }
    numeric_source = source_database(
        stack, "smartgo_numeric_prices", ("sold_price numeric(12, 2)", "sold_price numeric")
    )
    text_source = source_database(
        stack, "smartgo_text_prices", ("sold_price numeric(12, 2)", "sold_price text")
    )
    with psycopg.connect(numeric_source) as conn:
        for pid, (price, _) in numbers.items():
            conn.execute(insert.replace(", %s, '2025", ", %s::numeric, '2025"), (pid, price))
    with psycopg.connect(text_source) as conn:
        for pid, price in texts.items():
            conn.execute(insert, (pid, price))

    outcomes = {}
    for n, dsn in enumerate((numeric_source, text_source)):
        store, res = sales_only(dsn, tmp_path / str(n))
        assert materialize([smartgo_sales], resources=res, partition_key=day).success
        sales = pq.read_table(
            store.local_path(asset_output_key(["smartgo_sales"], day))
        ).to_pylist()
        quarantine = pq.read_table(
            store.local_path(f"staging/quarantine/smartgo_sales/{day}.parquet")
        )
        outcomes |= {s["product_id"]: s["sold_price"] for s in sales}
        outcomes |= {q["product_id"]: q["reason"] for q in quarantine.to_pylist()}

    assert outcomes == {
        **{pid: reason or 12.5 for pid, (_, reason) in numbers.items()},
        **{
            pid: f"unparseable sold_price {price!r}"
            for pid, price in texts.items()
            if "ok" not in pid
        },
        "TXT-ok": 12.5,
        "TXT-ok-int": 7.0,
    }


def test_a_source_that_repeats_a_product_id_keeps_its_latest_sale_once(stack, tmp_path):
    """A source without a primary key (a view, a replica table) can repeat an id within a day."""
    view = source_database(stack, "smartgo_view", ("id text PRIMARY KEY", "id text"))
    with psycopg.connect(view) as conn:
        for hour, price in ((9, "10.00"), (15, "12.00"), (11, "11.00")):
            conn.execute(
                "INSERT INTO smartgo.products VALUES ('TWICE', 'carousel-labs', 'Books', 'Penguin', "
                "'Good', %s, %s, 'https://cdn.example.com/x.png', NULL, 'SOLD')",
                (price, datetime(2025, 6, 8, hour, tzinfo=UTC)),
            )
        conn.execute(
            "INSERT INTO smartgo.products VALUES ('ONCE', 'carousel-labs', NULL, NULL, NULL, 5, "
            "'2025-06-08T10:00:00Z', 'https://cdn.example.com/y.png', NULL, 'SOLD')"
        )
    store, res = sales_only(view, tmp_path)

    result = materialize([smartgo_sales], resources=res, partition_key="2025-06-08")

    metadata = result.asset_materializations_for_node("smartgo_sales")[0].metadata
    assert metadata["duplicate_product_ids"].value == 2 and metadata["valid_rows"].value == 2
    sales = pq.read_table(store.local_path(asset_output_key(["smartgo_sales"], "2025-06-08")))
    assert sorted(
        zip(
            sales.column("product_id").to_pylist(),
            sales.column("sold_price").to_pylist(),
            strict=True,
        )
    ) == [("ONCE", 5.0), ("TWICE", 12.0)]
    quarantine = pq.read_table(
        store.local_path("staging/quarantine/smartgo_sales/2025-06-08.parquet")
    )
    assert quarantine.column("product_id").to_pylist() == ["TWICE", "TWICE"]


UNTRUSTED = {
    "not-json": "answer is not JSON",
    "no-field": "answer has no 'embedding'",
    "not-a-list": "is a str, not a list",
    "short": "1023 values, asked for 1024",
    "strings": "holds non-numbers",
    "booleans": "holds non-numbers",
    "nan": "NaN, infinity",
    "infinity": "NaN, infinity",
    "beyond-float32": "beyond float32",
    "zeros": "all zeros",
    "array": "answer has no 'embedding'",
    "hang": "did not answer: ReadTimeoutError",
    "reset": "did not answer",
    "deep": "nests too deeply",
    "huge-integers": "too large for a float",
    "cut-short": "did not answer",
    "huge-body": "over 1048576 bytes",
}


def test_untrusted_model_answers_are_per_sale_errors_and_no_such_vector_is_stored(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    day = "2025-06-16"
    assert set(UNTRUSTED) == set(servers.HOSTILE_ANSWERS)
    images = {
        kind: servers.png((7 * n, 90, 250 - 7 * n), size=(40 + n, 40))
        for n, kind in enumerate(UNTRUSTED)
    }
    cdn_state.images.update({f"/answer-{kind}.png": data for kind, data in images.items()})
    bedrock_calls.hostile = {
        hashlib.sha256(data).hexdigest(): kind for kind, data in images.items()
    }
    good = [sale(f"GOOD-{n}", day, f"{cdn}/ok.png") for n in range(20)]
    hostile = [sale(f"ANSWER-{kind}", day, f"{cdn}/answer-{kind}.png") for kind in UNTRUSTED]
    insert_products(stack.postgres_uri, good + hostile)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    # A silent endpoint costs at most 2 attempts x (1 + 0.5) s for its sale.
    res["image_embedder"] = BedrockEmbedder(
        endpoint_url=bedrock,
        region_name="us-east-1",
        read_timeout_s=0.5,
        connect_timeout_s=1,
        http_attempts=2,
    )

    result = run(res, day, max_error_ratio=0.5, own_failure_window_s=3)

    assert result.success
    rows = day_rows(res, day)
    for kind, reason in UNTRUSTED.items():
        row = rows[f"ANSWER-{kind}"]
        assert row["embedding_vector"] is None and reason in row["embedding_error"], (kind, row)
    assert all(len(rows[s["id"]]["embedding_vector"]) == 1024 for s in good)
    stored = pa.array([r["embedding_vector"] for r in rows.values() if r["embedding_vector"]])
    assert np.isfinite(np.asarray(stored.flatten())).all()


def test_an_endpoint_that_stops_answering_is_waited_out_then_named_with_how_long(
    bedrock, bedrock_calls
):
    from smartgo_analytics.core.outage import Outage, OutageTooLong
    from smartgo_analytics.resources.embeddings import BedrockUnavailable

    silent = servers.png((1, 2, 3))
    bedrock_calls.hostile = {hashlib.sha256(silent).hexdigest(): "hang"}
    embedder = BedrockEmbedder(
        endpoint_url=bedrock, region_name="us-east-1", read_timeout_s=0.2, http_attempts=1
    )
    with pytest.raises(BedrockUnavailable, match="did not answer: ReadTimeoutError"):
        embedder.embed(silent)
    outage = Outage("Bedrock", allowance_s=1.0, backoff_s=0.1)
    with pytest.raises(OutageTooLong, match=r"Bedrock was unavailable for \d+ s.*ReadTimeoutError"):
        outage.call(lambda: embedder.embed(silent))
    assert outage.report().retries >= 2
    # Once it answers again, so does the embedder: nothing latched.
    assert embedder.embed(servers.png((9, 9, 9))).shape == (1024,)


def test_a_crash_during_the_iceberg_write_leaves_the_previous_rows_readable(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, tmp_path, monkeypatch
):
    day = "2025-06-05"
    insert_products(stack.postgres_uri, [sale(f"C-{n}", day, f"{cdn}/ok.png") for n in range(4)])
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    run(res, day)
    before = day_rows(res, day)
    insert_products(
        stack.postgres_uri,
        [sale(f"C-{n}", day, f"{cdn}/ok.png", sold_price="999") for n in range(6)],
    )

    import pyiceberg.table

    def crash(*args, **kwargs):
        raise OSError("disk full in the middle of a commit")

    with monkeypatch.context() as patch:
        patch.setattr(pyiceberg.table.Transaction, "commit_transaction", crash)
        failed = materialize(
            ASSETS,
            resources=res,
            partition_key=day,
            raise_on_error=False,
            selection=[AssetKey("smartgo_sales_iceberg")]
            + [AssetKey("smartgo_sales"), AssetKey("product_image_embeddings")],
        )
    assert not failed.success
    assert day_rows(res, day) == before

    run(res, day)
    after = day_rows(res, day)
    assert set(after) == {f"C-{n}" for n in range(6)} and {
        r["sold_price"] for r in after.values()
    } == {999.0}


@pytest.mark.parametrize("dimension", [1024])
def test_a_misconfigured_database_fails_with_the_setting_named_and_no_secret(dimension, tmp_path):
    db = SmartGoDatabase(
        dsn="postgresql://smartgo:hunter2-secret@127.0.0.1:1/smartgo?connect_timeout=2"
    )
    with pytest.raises(Exception) as raised:
        next(
            db.stream_sold_products(
                datetime(2031, 1, 1, tzinfo=UTC), datetime(2031, 1, 2, tzinfo=UTC)
            )
        )
    assert "cannot connect to the SmartGo database 127.0.0.1:1/smartgo" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    with pytest.raises(
        Exception, match="exactly one of SMARTGO_DATABASE_URL or SMARTGO_DB_SSM_PARAMETER"
    ):
        next(
            SmartGoDatabase().stream_sold_products(
                datetime(2031, 1, 1, tzinfo=UTC), datetime(2031, 1, 2, tzinfo=UTC)
            )
        )


def test_the_sales_query_is_a_half_open_utc_window_and_can_be_limited_to_one_tenant(stack):
    day = "2025-06-20"
    insert_products(
        stack.postgres_uri,
        [
            sale(
                "W-first", day, "http://x/a.png", sold_date=datetime(2025, 6, 20, 0, 0, tzinfo=UTC)
            ),
            sale(
                "W-last",
                day,
                "http://x/a.png",
                sold_date=datetime(2025, 6, 20, 23, 59, 59, tzinfo=UTC),
            ),
            sale(
                "W-next", day, "http://x/a.png", sold_date=datetime(2025, 6, 21, 0, 0, tzinfo=UTC)
            ),
            sale("W-other", day, "http://x/a.png", tenant_id="northwind-resale"),
        ],
    )
    window = (datetime(2025, 6, 20, tzinfo=UTC), datetime(2025, 6, 21, tzinfo=UTC))

    def ids(db):
        return sorted(row["id"] for batch in db.stream_sold_products(*window) for row in batch)

    assert ids(SmartGoDatabase(dsn=stack.postgres_uri, fetch_batch_size=1)) == [
        "W-first",
        "W-last",
        "W-other",
    ]
    assert ids(SmartGoDatabase(dsn=stack.postgres_uri, tenant="northwind-resale")) == ["W-other"]


def test_the_database_can_be_configured_from_the_ssm_json_parameter(stack):
    import json

    from psycopg.conninfo import conninfo_to_dict

    target = conninfo_to_dict(stack.postgres_uri)
    ssm = boto3.client("ssm", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1")
    config = {
        "host": target["host"],
        "port": 5432,
        "database": target["dbname"],
        "username": "postgres",
        "password": "not-needed-locally",
        "maxConnections": 10,
        "connectionTimeoutMs": 5000,
        "queryTimeoutMs": 1500,
    }
    ssm.put_parameter(
        Name="/tf/test/smartgo/database/config",
        Value=json.dumps(config),
        Type="SecureString",
        Overwrite=True,
    )
    db = SmartGoDatabase(
        ssm_parameter_name="/tf/test/smartgo/database/config",
        endpoint_url=stack.aws_endpoint_url,
        region_name="us-east-1",
    )
    with db.connect() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "1500ms"
        assert conn.execute("SELECT current_database() AS d").fetchone()["d"] == "smartgo"
    ssm.put_parameter(
        Name="/tf/test/smartgo/bad", Value='{"host": "db"}', Type="SecureString", Overwrite=True
    )
    bad = SmartGoDatabase(
        ssm_parameter_name="/tf/test/smartgo/bad",
        endpoint_url=stack.aws_endpoint_url,
        region_name="us-east-1",
    )
    with pytest.raises(
        Exception,
        match="SSM parameter /tf/test/smartgo/bad lacks port, database, username, password",
    ):
        bad.connect()


def test_titan_retries_model_timeouts_itself_and_sends_the_documented_body(bedrock, bedrock_calls):
    bedrock_calls.model_timeouts_next = 2
    embedder = BedrockEmbedder(
        endpoint_url=bedrock, region_name="us-east-1", model_timeout_backoff_s=0.01
    )
    vector = embedder.embed(servers.png())
    assert vector.shape == (1024,) and bedrock_calls.calls == 3
    bedrock_calls.reset()
    bedrock_calls.model_timeouts_next = 10
    from smartgo_analytics.resources.embeddings import EmbeddingError

    with pytest.raises(EmbeddingError, match="ModelTimeoutException"):
        embedder.embed(servers.png())
    assert bedrock_calls.calls == 4  # the call and three retries


def test_titan_calls_from_many_threads_at_once_share_one_client_and_one_bound(
    bedrock, bedrock_calls
):
    bedrock_calls.latency_s = 0.05
    embedder = BedrockEmbedder(endpoint_url=bedrock, region_name="us-east-1", max_concurrency=3)
    start = threading.Barrier(24)
    clients = []

    def first_call(n: int):
        start.wait()
        clients.append(embedder._client())
        return embedder.embed(servers.png((n, 0, 0)))

    with ThreadPoolExecutor(24) as pool:
        vectors = list(pool.map(first_call, range(24)))
    assert len(vectors) == 24 and bedrock_calls.calls == 24
    assert len({id(client) for client in clients}) == 1
    assert bedrock_calls.most_in_flight == 3


def test_a_day_split_over_worker_processes_writes_what_one_process_writes(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    day = "2025-06-23"
    for n in range(12):
        cdn_state.images[f"/split-{n}.png"] = servers.png((20 * n, 10, 90))
    # Each picture is sold twice under the same URL, and three sales have unusable images.
    insert_products(
        stack.postgres_uri,
        [sale(f"S-{n:02d}", day, f"{cdn}/split-{n % 12}.png") for n in range(24)]
        + [
            sale(f"S-{name}", day, f"{cdn}{HOSTILE[name][0]}")
            for name in ("missing", "page", "bomb")
        ],
    )
    (tmp_path / "alone").mkdir(), (tmp_path / "split").mkdir()
    alone = resources(stack, s3_bucket, bedrock, cdn, tmp_path / "alone")
    run(alone, day, worker_processes=1, max_error_ratio=0.5)
    assert bedrock_calls.calls == 12
    bedrock_calls.reset()

    # A bucket of its own: the first run's vectors are not in its store.
    boto3.client("s3", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1").create_bucket(
        Bucket=f"{s3_bucket[:50]}-split"
    )
    split = resources(stack, f"{s3_bucket[:50]}-split", bedrock, cdn, tmp_path / "split")
    result = run(split, day, worker_processes=3, worker_min_cpu_s=0, max_error_ratio=0.5)

    metadata = result.asset_materializations_for_node("product_image_embeddings")[0].metadata
    assert metadata["worker_processes"].value == 3
    assert bedrock_calls.calls == 12 and metadata["embedding_calls"].value == 12
    ignore = {"embedding_id", "ingestion_timestamp"}
    rows_alone, rows_split = day_rows(alone, day), day_rows(split, day)
    assert len(rows_split) == 27 and rows_split["S-bomb"]["embedding_error"]
    # Results come back in the sales' order, which is how a big day's batches are joined.
    assert stored_ids(split, "product_image_embeddings", day) == stored_ids(
        split, "smartgo_sales", day
    )
    for rows in (rows_alone, rows_split):  # the same key, in each run's bucket
        for row in rows.values():
            row["image_s3_key"] = row["image_s3_key"] and row["image_s3_key"].split("/", 3)[3]
    assert {k: {c: v for c, v in r.items() if c not in ignore} for k, r in rows_alone.items()} == {
        k: {c: v for c, v in r.items() if c not in ignore} for k, r in rows_split.items()
    }

    bedrock_calls.reset()
    again = run(split, day, worker_processes=3, worker_min_cpu_s=0, max_error_ratio=0.5)
    metadata = again.asset_materializations_for_node("product_image_embeddings")[0].metadata
    assert bedrock_calls.calls == 0 and metadata["embeddings_reused"].value == 24


def test_a_day_whose_sales_share_one_url_in_several_workers_embeds_it_once(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    day = "2025-06-24"
    cdn_state.images["/hot.png"] = servers.png((250, 120, 10))
    for n in range(3):
        cdn_state.images[f"/cold-{n}.png"] = servers.png((10, 40 * n, 200))
    hot = [
        sale(f"H-{n:02d}", day, f"{cdn}/hot.png", tenant_id=("carousel-labs", "northwind")[n % 2])
        for n in range(30)
    ]
    cold = [sale(f"C-{n}", day, f"{cdn}/cold-{n}.png") for n in range(3)]
    insert_products(stack.postgres_uri, hot + cold)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)

    result = run(res, day, worker_processes=3, worker_min_cpu_s=0)

    metadata = result.asset_materializations_for_node("product_image_embeddings")[0].metadata
    # Chunks go to whichever worker is free: the URL's later sales only download and copy it.
    assert sum(metadata["sales_per_worker_process"].value) == 33
    assert bedrock_calls.calls == 4 and metadata["embedding_calls"].value == 4
    rows = day_rows(res, day)
    vectors = {tuple(rows[s["id"]]["embedding_vector"]) for s in hot}
    assert len(vectors) == 1 and len(next(iter(vectors))) == 1024
    keys = {rows[s["id"]]["image_s3_key"] for s in hot}
    assert len(keys) == 30  # each sale's own copy, under its own tenant and product


def test_known_vectors_keep_one_usable_vector_per_image_out_of_memory_and_give_it_back():
    vector = pa.list_(pa.float32())
    batch = lambda shas, models, vectors: pa.RecordBatch.from_pydict(  # noqa: E731
        {
            "image_sha256": shas,
            "embedding_model": models,
            "embedding_vector": pa.array(vectors, vector),
        }
    )
    batches = [
        batch(
            ["a", "b", "c", None],
            ["m", "m", "other", "m"],
            [[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 0]],
        ),
        batch(
            ["a", "d", "e", "f"], ["m", "m", "m", "m"], [[9, 9, 9], [1, 2], None, [0.5, -1, 2e30]]
        ),
    ]

    with KnownVectors(iter(batches), "m", 3) as known:
        # The first vector of each image, for this model, of this length: not "c" (another model),
        # "d" (two values) or "e" (none).
        assert [sha for sha in ("a", "b", "c", "d", "e", "f", None) if sha in known] == [
            "a",
            "b",
            "f",
        ]
        assert known["a"].tolist() == [1, 2, 3] and known["b"].tolist() == [4, 5, 6]
        assert known["f"].tolist() == [0.5, -1, np.float32(2e30)]


class DyingEmbedder(LocalVisualEmbedder):
    """Ends its process: with exit code 3, or killed as the kernel's out-of-memory killer does."""

    killed: bool = False

    def embed(self, image: bytes):
        if self.killed:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)


@pytest.mark.parametrize(
    ("killed", "how"),
    [(False, "exited with code 3"), (True, r"was killed by signal 9 \(SIGKILL\)")],
)
def test_a_worker_process_that_dies_fails_the_work_naming_it_and_how(cdn, tmp_path, killed, how):
    work = SaleWork(
        image_fetcher=ImageFetcher(allowlist=["localhost"]),
        object_store=LocalObjectStore(bucket="b", lake_dir=str(tmp_path)),
        image_embedder=DyingEmbedder(killed=killed),
        image_vectors=ImageVectors(),
        limits=SaleLimits(threads=2),
    )
    items = [Sale(f"D-{n}", "t", f"{cdn}/ok.png") for n in range(4)]

    with pytest.raises(WorkerFailed, match=rf"embedding worker process \d+ {how}"):
        list(SalesRun(work, items, ProcessRule(2, min_cpu_s=0), Pace(processes=worker_context())))


def paced_day(stack, cdn, cdn_state, day: str, sales: int, tag: str) -> None:
    for n in range(sales):
        cdn_state.images[f"/{tag}-{n}.png"] = servers.png((n * 7 % 256, 200 - n, 33))
    insert_products(
        stack.postgres_uri,
        [sale(f"{tag.upper()}-{n:02d}", day, f"{cdn}/{tag}-{n}.png") for n in range(sales)],
    )


def test_worker_processes_pace_their_calls_together_to_the_quota(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    day = "2025-07-01"
    paced_day(stack, cdn, cdn_state, day, 36, "paced")
    bedrock_calls.quota = servers.RequestQuota(per_minute=600)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    res["image_embedder"] = BedrockEmbedder(
        endpoint_url=bedrock, region_name="us-east-1", requests_per_minute=600, max_concurrency=12
    )

    result = run(res, day, worker_processes=3, worker_min_cpu_s=0)

    metadata = result.asset_materializations_for_node("product_image_embeddings")[0].metadata
    assert metadata["worker_processes"].value == 3
    assert metadata["embedded"].value == 36 and bedrock_calls.calls == 36
    # Twelve calls in flight over three processes, one quota: nearly nothing refused.
    assert bedrock_calls.quota.refused <= 1
    assert metadata["throttled_responses"].value == bedrock_calls.quota.refused
    assert metadata["bedrock_requests"].value == 36 + bedrock_calls.quota.refused
    assert bedrock_calls.quota.admitted_per_minute() <= 600
    assert 0.85 <= metadata["ratio_to_quota"].value <= 1.0


def test_a_quota_lower_than_configured_slows_the_calls_down_and_loses_no_vector(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    day = "2025-07-02"
    paced_day(stack, cdn, cdn_state, day, 24, "slowed")
    bedrock_calls.quota = servers.RequestQuota(per_minute=240)  # other runs share the account
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    res["image_embedder"] = BedrockEmbedder(
        endpoint_url=bedrock,
        region_name="us-east-1",
        requests_per_minute=480,
        max_concurrency=8,
        model_timeout_backoff_s=0.05,
    )

    result = run(res, day, worker_processes=2, worker_min_cpu_s=0)

    metadata = result.asset_materializations_for_node("product_image_embeddings")[0].metadata
    assert metadata["embedded"].value == 24 and bedrock_calls.calls == 24
    refused = bedrock_calls.quota.refused
    assert 0 < refused == metadata["throttled_responses"].value
    # Slowed to what the server admits, not retried at the configured rate.
    assert refused <= 12, refused
    assert metadata["requests_per_minute"].value < 480


def test_calls_are_paced_to_a_tokens_per_minute_quota_by_what_each_answer_says_it_was_charged(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    day = "2025-07-05"
    paced_day(stack, cdn, cdn_state, day, 30, "tokens")
    charged = sum(servers.image_tokens(cdn_state.images[f"/tokens-{n}.png"]) for n in range(30))
    per_minute = charged * 20  # the day's tokens in 3 s
    bedrock_calls.quota = servers.RequestQuota(per_minute, tokens=True)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    res["image_embedder"] = BedrockEmbedder(
        endpoint_url=bedrock,
        region_name="us-east-1",
        tokens_per_minute=per_minute,
        max_concurrency=12,
    )

    result = run(res, day, worker_processes=2, worker_min_cpu_s=0)

    metadata = result.asset_materializations_for_node("product_image_embeddings")[0].metadata
    assert metadata["embedded"].value == 30 and bedrock_calls.calls == 30
    # Twelve calls could be in flight at once: paced by their charge, the quota (the server's
    # bucket: a minute's tokens at its rate, a second's at once) refuses nearly none of them, and
    # the schedule's own rate is just under the quota's. (The rate of arrival at the server, over
    # a run of 3 s, is also the scheduling noise of two processes on a loaded machine: the
    # bucket's verdict is the measure.)
    assert bedrock_calls.quota.refused <= 1
    assert metadata["bedrock_tokens_charged"].value == charged
    assert 0.8 <= metadata["ratio_to_token_quota"].value <= 1.0


def test_an_image_embedded_on_an_earlier_day_is_not_embedded_again_for_the_same_model_and_length(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    first, second = "2025-07-03", "2025-07-04"
    for n in range(9):
        cdn_state.images[f"/seen-{n}.png"] = servers.png((n * 25, 90, 255 - n * 20))
    insert_products(
        stack.postgres_uri,
        [sale(f"E-{n}", first, f"{cdn}/seen-{n}.png") for n in range(6)]
        + [sale(f"F-{n}", second, f"{cdn}/seen-{n}.png") for n in range(3, 9)],
    )
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    run(res, first)
    assert bedrock_calls.calls == 6
    bedrock_calls.reset()

    result = run(res, second)

    metadata = result.asset_materializations_for_node("product_image_embeddings")[0].metadata
    assert bedrock_calls.calls == 3 and metadata["embedding_calls"].value == 3
    assert metadata["embeddings_reused"].value == 3
    assert metadata["estimated_cost_saved_usd"].value == pytest.approx(3 * 0.00006)
    before, after = day_rows(res, first), day_rows(res, second)
    for n in range(3, 6):  # the earlier day's vector, in the later day's row
        assert after[f"F-{n}"]["embedding_vector"] == before[f"E-{n}"]["embedding_vector"]
    assert all(len(after[f"F-{n}"]["embedding_vector"]) == 1024 for n in range(3, 9))

    for other in ({"dimension": 256}, {"model": servers.NOVA}):
        bedrock_calls.reset()
        res["image_embedder"] = BedrockEmbedder(
            endpoint_url=bedrock, region_name="us-east-1", **other
        )
        run(res, second)
        assert bedrock_calls.calls == 6, other  # another model or length: every image once more


def test_price_bands_give_each_kind_and_its_roll_ups_their_quantiles_over_90_days_once_per_day(
    stack, s3_bucket, bedrock, cdn, tmp_path
):
    days = ("2025-04-10", "2025-07-10", "2025-07-12")  # the first is outside the last's 90 days
    prices = {days[0]: [999, 999], days[1]: [10, 20, 30, 40], days[2]: [50, 60, 70, 80]}
    insert_products(
        stack.postgres_uri,
        [
            sale(
                f"PB-{day}-{n}",
                day,
                f"{cdn}/ok.png",
                sold_price=str(price),
                brand=("Sony", "Bose")[n % 2],
                condition=("Good", "New")[n < 2],
            )
            for day, day_prices in prices.items()
            for n, price in enumerate(day_prices)
        ],
    )
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    for day in days:
        run(res, day)

    res["quicksight"] = QuickSightExport()
    for _ in range(2):  # materialised again: the day's bands are replaced, not added
        result = materialize(
            [price_bands, price_bands_dataset], resources=res, partition_key=days[2]
        )
    assert result.success
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.metadata["bands"].value == 1 + 2 + 4

    table = res["iceberg"].catalog().load_table("pricing_intelligence.price_bands")
    rows = table.scan().to_arrow().to_pylist()
    assert len(rows) == 7 and {r["band_date"].isoformat() for r in rows} == {days[2]}
    (whole,) = [r for r in rows if r["level"] == "category"]
    window = [10, 20, 30, 40, 50, 60, 70, 80]  # not the 999s of April
    assert whole["sales_count"] == 8 and whole["brand"] is None and whole["condition"] is None
    assert [whole[q] for q in ("p10", "p25", "median", "p75", "p90")] == pytest.approx(
        list(np.percentile(window, [10, 25, 50, 75, 90]))
    )
    assert whole["mean"] == pytest.approx(45.0)
    assert whole["window_start"].isoformat() == "2025-04-14"
    sony_good = [
        r
        for r in rows
        if r["level"] == "category_brand_condition"
        and (r["brand"], r["condition"]) == ("Sony", "Good")
    ]
    assert [(r["sales_count"], r["median"]) for r in sony_good] == [(2, 50.0)]  # 30 and 70

    # The sixth QuickSight dataset: the same bands, one JSON type per field on every line.
    lines = res["object_store"].get_bytes(f"quicksight/price_bands/{days[2]}.json").split(b"\n")
    records = [json.loads(line) for line in lines if line]
    assert len(records) == 7 and len({r["band_id"] for r in records}) == 7
    assert all(
        type(r[q]) is float for r in records for q in ("p10", "p25", "median", "p75", "p90", "mean")
    )
    assert all(type(r["sales_count"]) is int and r["date"] == days[2] for r in records)
    (category_line,) = [r for r in records if r["level"] == "category"]
    assert (
        category_line["median"] == whole["median"] and category_line["window_start"] == "2025-04-14"
    )
    manifest = json.loads(res["object_store"].get_bytes("quicksight/manifests/price_bands.json"))
    # A finished month is read from one file: July's.
    assert manifest["fileLocations"][0]["URIs"] == [
        f"s3://{s3_bucket}/quicksight/months/price_bands/2025-07.json"
    ]
