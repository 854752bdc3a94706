"""Faults that pass: servers on 127.0.0.1 that fail for a window while a real day materialises.
The day completes with every vector and no re-run; an outage longer than the allowance fails the
step, naming the dependency."""

import pytest

from smartgo_analytics_tests.conftest import insert_products, sale
from smartgo_analytics_tests.servers import png
from smartgo_analytics_tests.test_pricing_pipeline import check, day_rows, resources, run

SALES = 40


def day_of_pictures(stack, cdn, cdn_state, day: str, tag: str) -> None:
    """SALES sales, each its own picture, new to every test (so each is a download and an
    embedding call)."""
    salt = sum(tag.encode())
    for n in range(SALES):
        cdn_state.images[f"/{tag}/{n}.png"] = png((n * 5 % 256, salt % 256, (200 - n) % 256),
                                                  size=(64, 64 + salt % 50))  # fmt: skip
    insert_products(stack.postgres_uri, [sale(f"{tag}-{n}", day, f"{cdn}/{tag}/{n}.png")
                                         for n in range(SALES)])  # fmt: skip


def embedding_metadata(result) -> dict:
    (materialisation,) = [
        m for m in result.asset_materializations_for_node("product_image_embeddings")
    ]
    return {k: v.value for k, v in materialisation.metadata.items()}


@pytest.mark.parametrize(
    "dependency, kind, seconds, share",
    [("bedrock", "503", 6, 1.0), ("bedrock", "500", 3, 1.0), ("bedrock", "reset", 2, 1.0),
     ("cdn", "reset", 5, 1.0), ("cdn", "reset", 8, 0.5)],
)  # fmt: skip
def test_a_day_waits_out_a_short_outage_and_every_sale_gets_its_vector(
    stack,
    s3_bucket,
    bedrock,
    bedrock_calls,
    cdn,
    cdn_state,
    tmp_path,
    dependency,
    kind,
    seconds,
    share,
):
    day = "2025-09-0" + str(1 + ["503", "500", "reset"].index(kind) + (3 if dependency == "cdn" else 0)
                            + (1 if share < 1 else 0))  # fmt: skip
    tag = f"F{dependency}{kind}{int(share * 10)}"
    day_of_pictures(stack, cdn, cdn_state, day, tag)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    fault = bedrock_calls.fault if dependency == "bedrock" else cdn_state.fault
    fault.open(kind, seconds, share)
    try:
        result = run(res, day)
    finally:
        fault.close()

    assert fault.faulted > 0  # the window was met
    rows = day_rows(res, day)
    assert len(rows) == SALES
    assert [r["embedding_error"] for r in rows.values() if r["embedding_vector"] is None] == []
    ratio = check(result, "embedding_error_ratio_within_budget")
    assert ratio.passed and ratio.metadata["errors"].value == 0
    figures = embedding_metadata(result)
    assert figures["outage_retries"] > 0 and figures["sales_requeued"] > 0
    down = figures["outage_seconds"]
    name = "Bedrock" if dependency == "bedrock" else "CDN localhost"
    if share == 1.0:  # (when half the calls get through, the server is never down as a whole)
        assert 0 < down[name] < seconds + 20, down


def test_an_outage_longer_than_the_allowance_fails_the_step_naming_the_dependency(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    """Bedrock answers 503 throughout: the step waits each time for the allowance, is retried by
    its retry policy (3 times, with backoff), then fails naming Bedrock and how long it was down."""
    from smartgo_analytics.resources.embeddings import TitanEmbedder

    day = "2025-09-09"
    day_of_pictures(stack, cdn, cdn_state, day, "Flong")
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    res["image_embedder"] = TitanEmbedder(
        endpoint_url=bedrock, region_name="us-east-1", http_attempts=1, requests_per_minute=60_000
    )
    bedrock_calls.fault.open("503", 600)
    try:
        result = run(res, day, raise_on_error=False, outage_allowance_s=0.5)
    finally:
        bedrock_calls.fault.close()
    assert not result.success
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 3
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"
                  and e.step_key == "product_image_embeddings"][-1:]  # fmt: skip
    error = failure.event_specific_data.error
    message = error.message + "".join(c.message for c in [error.cause] if c)
    assert "Bedrock was unavailable for" in message and "OUTAGE_ALLOWANCE_S" in message, message
    assert "ServiceUnavailableException" in message
    assert day_rows(res, day) == {}  # nothing half-written


@pytest.mark.parametrize("down_s", [1, 8])
def test_a_database_restart_in_the_middle_of_the_read_is_waited_out_and_the_read_made_again(
    stack, tmp_path, down_s
):
    """The connection to Postgres is reset in the middle of the day's rows and the server refuses
    connections for a while: the read starts again, and the day has each sale once."""
    from pathlib import Path

    from dagster import materialize
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from smartgo_analytics.assets.pricing_intelligence import smartgo_sales
    from smartgo_analytics.resources.dynamodb import ExportProgressTracker
    from smartgo_analytics.resources.object_store import LocalObjectStore
    from smartgo_analytics.resources.parquet_io import ParquetIOManager
    from smartgo_analytics.resources.postgres import SmartGoDatabase
    from smartgo_analytics_tests.servers import TcpProxy

    day = f"2025-09-1{down_s}"
    insert_products(stack.postgres_uri, [sale(f"PG{down_s}-{n:03d}", day, "http://x/a.png")
                                         for n in range(300)])  # fmt: skip
    # The embedded server listens on a Unix socket; the proxy makes it a TCP server that can be cut.
    (server,) = [
        p
        for p in Path(conninfo_to_dict(stack.postgres_uri)["host"]).glob(".s.PGSQL.*")
        if not p.name.endswith(".lock")
    ]
    proxy = TcpProxy(str(server))
    proxied = make_conninfo(stack.postgres_uri, host="127.0.0.1", port=proxy.port)
    store = LocalObjectStore(lake_dir=str(tmp_path), bucket="lake")
    res = {"smartgo_db": SmartGoDatabase(dsn=proxied, fetch_batch_size=20), "object_store": store,
           "parquet_io_manager": ParquetIOManager(object_store=store),
           "export_progress": ExportProgressTracker()}  # fmt: skip
    proxy.cut_after(20_000, down_s)  # a few batches in
    try:
        result = materialize([smartgo_sales], resources=res, partition_key=day)
        assert proxy.cuts == 1
    finally:
        proxy.close()
    (materialisation,) = result.asset_materializations_for_node("smartgo_sales")
    figures = {k: v.value for k, v in materialisation.metadata.items()}
    assert figures["valid_rows"] == 300 and figures["quarantined_rows"] == 0  # each sale once
    assert figures["database_reads_retried"] >= 1
    assert down_s * 0.5 <= figures["database_outage_seconds"] < down_s + 15
