"""Faults that pass: servers on 127.0.0.1 that fail for a window while a real day materialises.
The day completes with every vector and no re-run; an outage longer than the allowance fails the
step, naming the dependency."""

import pytest

from smartgo_analytics_tests.pipeline import day_rows, insert_products, resources, run, sale
from smartgo_analytics_tests.servers import png
from smartgo_analytics_tests.test_pricing_pipeline import check

SALES = 40


def day_of_pictures(stack, cdn, cdn_state, day: str, tag: str) -> None:
    """SALES sales, each its own picture, new to every test (so each is a download and an
    embedding call)."""
    salt = sum(tag.encode())
    for n in range(SALES):
        cdn_state.images[f"/{tag}/{n}.png"] = png(
            (n * 5 % 256, salt % 256, (200 - n) % 256), size=(64, 64 + salt % 50)
        )
    insert_products(
        stack.postgres_uri, [sale(f"{tag}-{n}", day, f"{cdn}/{tag}/{n}.png") for n in range(SALES)]
    )


def embedding_metadata(result) -> dict:
    (materialisation,) = [
        m for m in result.asset_materializations_for_node("product_image_embeddings")
    ]
    return {k: v.value for k, v in materialisation.metadata.items()}


FAULTS = [
    ("bedrock", "503", 6, 1.0, 0),
    ("bedrock", "500", 3, 1.0, 0),
    ("bedrock", "reset", 2, 1.0, 0),
    ("cdn", "reset", 5, 1.0, 0),
    ("cdn", "reset", 8, 0.5, 0),
    # In the middle of the day: after 15 calls answered, down for everyone for 10 s.
    ("bedrock", "503", 10, 1.0, 15),
]


@pytest.mark.parametrize("dependency, kind, seconds, share, after", FAULTS)
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
    after,
):
    day = f"2025-09-{1 + FAULTS.index((dependency, kind, seconds, share, after)):02d}"
    tag = f"F{dependency}{kind}{int(share * 10)}{after}"
    day_of_pictures(stack, cdn, cdn_state, day, tag)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    fault = bedrock_calls.fault if dependency == "bedrock" else cdn_state.fault
    fault.open(kind, seconds, share, after)
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
    name = "Bedrock" if dependency == "bedrock" else f"CDN {cdn.split('//')[1]}"
    if share == 1.0:  # (when half the calls get through, the server is never down as a whole)
        assert 0 < down[name] < seconds + 20, down


def test_an_outage_longer_than_the_allowance_fails_the_step_naming_the_dependency(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    """Bedrock answers 503 throughout: the step waits each time for the allowance, is retried by
    its retry policy (3 times, with backoff), then fails naming Bedrock and how long it was down."""
    from smartgo_analytics.resources.embeddings import BedrockEmbedder

    day = "2025-09-09"
    day_of_pictures(stack, cdn, cdn_state, day, "Flong")
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    res["image_embedder"] = BedrockEmbedder(
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
    (failure,) = [
        e
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE" and e.step_key == "product_image_embeddings"
    ][-1:]
    error = failure.event_specific_data.error
    message = error.message + "".join(c.message for c in [error.cause] if c)
    assert "Bedrock was unavailable for" in message and "OUTAGE_ALLOWANCE_S" in message, message
    assert "ServiceUnavailableException" in message
    assert day_rows(res, day) == {}  # nothing half-written


def test_a_step_that_ends_on_an_outage_heals_in_its_retries_and_embeds_each_image_once(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    """Bedrock goes down after 20 answers for longer than the allowance: the step fails naming
    it, its retry policy tries the day again, and the retry that finds Bedrock back embeds only
    the images that had no vector yet (the others' vectors were kept when the step failed)."""
    from smartgo_analytics.resources.embeddings import BedrockEmbedder

    day = "2025-09-08"
    day_of_pictures(stack, cdn, cdn_state, day, "Fheal")
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    res["image_embedder"] = BedrockEmbedder(
        endpoint_url=bedrock, region_name="us-east-1", http_attempts=1, max_concurrency=4
    )
    bedrock_calls.fault.open("503", 5, after=20)
    try:
        result = run(res, day, raise_on_error=False, outage_allowance_s=0.5)
    finally:
        bedrock_calls.fault.close()

    assert result.success  # no person re-ran it
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) >= 1 and "Bedrock was unavailable" in str(retried[0].event_specific_data)
    rows = day_rows(res, day)
    assert len(rows) == SALES and all(r["embedding_vector"] is not None for r in rows.values())
    assert bedrock_calls.calls == SALES  # 20 before the outage, the other 20 in a retry


def test_object_store_and_dynamodb_5xx_in_the_middle_of_a_day_are_retried_and_lose_nothing(
    stack, s3_bucket, bedrock, bedrock_calls, cdn, cdn_state, tmp_path
):
    """S3 and DynamoDB answer 503 for 4 s in the middle of the day (image copies, image vectors,
    the staged hand-offs): the calls are retried with backoff, every sale gets its vector and
    every hand-off its rows."""
    import pyarrow.parquet as pq

    from smartgo_analytics.layout import asset_output_key
    from smartgo_analytics.resources.dynamodb import ImageVectors
    from smartgo_analytics.resources.object_store import S3ObjectStore
    from smartgo_analytics.resources.parquet_io import ParquetIOManager
    from smartgo_analytics_tests.servers import FaultyAwsProxy

    day = "2025-09-07"
    day_of_pictures(stack, cdn, cdn_state, day, "Fs3")
    proxy = FaultyAwsProxy(stack.aws_endpoint_url)
    res = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    store = S3ObjectStore(bucket=s3_bucket, endpoint_url=proxy.url, region_name="us-east-1")
    res |= {
        "object_store": store,
        "parquet_io_manager": ParquetIOManager(object_store=store),
        "image_vectors": ImageVectors(
            table_name=res["image_vectors"].table_name,
            endpoint_url=proxy.url,
            region_name="us-east-1",
        ),
    }
    proxy.fault.open("503", 4, after=15)
    try:
        result = run(res, day)
    finally:
        proxy.fault.close()
        proxy.server.shutdown()
        proxy.server.server_close()

    assert proxy.fault.faulted > 0 and result.success
    rows = day_rows(res, day)
    assert len(rows) == SALES and all(r["embedding_vector"] is not None for r in rows.values())
    direct = S3ObjectStore(
        bucket=s3_bucket, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    for asset in ("smartgo_sales", "product_image_embeddings"):
        staged = direct.get_bytes(asset_output_key([asset], day))
        assert pq.read_table(pa_buffer(staged)).num_rows == SALES, asset
    copies = direct.list_keys("images/smartgo/")
    assert {r["image_s3_key"].rsplit("/", 1)[1] for r in rows.values()} <= {
        k.rsplit("/", 1)[1] for k in copies
    }


def pa_buffer(data: bytes):
    import pyarrow as pa

    return pa.BufferReader(data)


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
    insert_products(
        stack.postgres_uri, [sale(f"PG{down_s}-{n:03d}", day, "http://x/a.png") for n in range(300)]
    )
    # The embedded server listens on a Unix socket; the proxy makes it a TCP server that can be cut.
    (server,) = [
        p
        for p in Path(conninfo_to_dict(stack.postgres_uri)["host"]).glob(".s.PGSQL.*")
        if not p.name.endswith(".lock")
    ]
    proxy = TcpProxy(str(server))
    proxied = make_conninfo(stack.postgres_uri, host="127.0.0.1", port=proxy.port)
    store = LocalObjectStore(lake_dir=str(tmp_path), bucket="lake")
    res = {
        "sales_source": SmartGoDatabase(dsn=proxied, fetch_batch_size=20),
        "object_store": store,
        "parquet_io_manager": ParquetIOManager(object_store=store),
        "export_progress": ExportProgressTracker(),
    }
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
