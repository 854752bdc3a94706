"""Re-embedding 30 days of history with another model: by Bedrock batch inference against on
demand, and the switch that follows, on the project's own loopback stack (Postgres, moto's S3 and
DynamoDB) with the Bedrock runtime and control-plane doubles of the tests, which answer a picture
the same way by either route."""

import contextlib
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import boto3
import numpy as np
from botocore.exceptions import ClientError
from dagster import DagsterInstance, materialize

from smartgo_analytics.assets.similarity import similarity_index
from smartgo_analytics.core.models.nova import MODEL as NOVA
from smartgo_analytics.layout import SIMILARITY_PREFIX, index_space
from smartgo_analytics.local.demo_data import PRODUCTS_DDL
from smartgo_analytics.local.stack import local_stack
from smartgo_analytics.reembedding import reembed_history_job
from smartgo_analytics.resources.bedrock_batch import BedrockBatch
from smartgo_analytics.resources.dynamodb import ImageVectors, create_image_vectors_table
from smartgo_analytics.resources.embeddings import BedrockEmbedder
from smartgo_analytics.similarity.reader import read_manifest
from smartgo_analytics_tests import servers
from smartgo_analytics_tests.pipeline import ASSETS, day_rows, insert_products, resources, sale

DAYS = 30
SALES_PER_DAY = 20
FIRST_DAY = date(2025, 3, 1)
ROLE = "arn:aws:iam::123456789012:role/smartgo-bedrock-batch"


def _vectors_table(stack, name: str) -> ImageVectors:
    vectors = ImageVectors(
        table_name=name, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    with contextlib.suppress(ClientError):
        create_image_vectors_table(vectors.boto3_client("dynamodb"), name)
    return vectors


def batch_reembedding() -> dict:
    import psycopg

    days = [(FIRST_DAY + timedelta(days=n)).isoformat() for n in range(DAYS)]
    with (
        tempfile.TemporaryDirectory(prefix="smartgo-bench-batch-") as work,
        local_stack(Path(work) / "home") as stack,
    ):
        with psycopg.connect(stack.postgres_uri) as conn:
            conn.execute(PRODUCTS_DDL)
        boto3.client(
            "s3", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
        ).create_bucket(Bucket="bench-batch")
        bedrock_state, batch_state = (
            servers.BedrockState(),
            servers.BatchState(stack.aws_endpoint_url),
        )
        batch_state.seconds = 2.0
        cdn_state = servers.CdnState()
        runtime, control = (
            servers.bedrock_server(bedrock_state),
            servers.bedrock_control_server(batch_state),
        )
        cdn = servers.hostile_cdn(cdn_state)
        bedrock = f"http://127.0.0.1:{runtime.server_port}"
        cdn_url = f"http://localhost:{cdn.server_port}"
        rows = []
        for n, day in enumerate(days):
            for m in range(SALES_PER_DAY):
                k = n * SALES_PER_DAY + m
                cdn_state.images[f"/h-{k}.png"] = servers.png(
                    (k % 251, (k * 7) % 253, (k * 13) % 241), (40 + k % 17, 40)
                )
                rows.append(sale(f"H-{k}", day, f"{cdn_url}/h-{k}.png", tenant_id="history"))
        insert_products(stack.postgres_uri, rows)
        titan = resources(stack, "bench-batch", bedrock, cdn_url, Path(work))
        assets = [*ASSETS, similarity_index]
        for day in days:  # the history, embedded by Titan
            assert materialize(assets, resources=titan, partition_key=day).success
        instance = DagsterInstance.ephemeral()
        config = {
            "ops": {"reembed_images": {"config": {"first_day": days[0], "last_day": days[-1]}}}
        }

        def reembed(vectors: ImageVectors, min_images: int) -> tuple[float, dict]:
            res = titan | {
                "image_embedder": BedrockEmbedder(
                    endpoint_url=bedrock, model=NOVA.model_id, max_concurrency=16
                ),
                "image_vectors": vectors,
                "bedrock_batch": BedrockBatch(
                    endpoint_url=f"http://127.0.0.1:{control.server_port}",
                    region_name="us-east-1",
                    role_arn=ROLE,
                    poll_s=0.5,
                    min_images=min_images,
                ),
            }
            started = time.perf_counter()
            result = reembed_history_job.execute_in_process(
                run_config=config, resources=res, instance=instance
            )
            seconds = time.perf_counter() - started
            (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
            return seconds, {k: v.value for k, v in event.event_specific_data.metadata.items()}

        demand_table, batch_table = (
            _vectors_table(stack, "by-demand"),
            _vectors_table(stack, "by-batch"),
        )
        calls = bedrock_state.calls
        demand_s, demand = reembed(demand_table, 10**9)
        demand_calls, calls = bedrock_state.calls - calls, bedrock_state.calls
        batch_s, batch = reembed(batch_table, 100)
        batch_calls = bedrock_state.calls - calls
        shas = _shas(titan, days)
        a = demand_table.vectors(NOVA.model_id, 1024, shas)
        b = batch_table.vectors(NOVA.model_id, 1024, shas)
        equal = len(a) == len(b) == len(shas) and all(
            np.allclose(a[s], b[s], atol=1e-6) for s in shas
        )
        demand_cost = demand["estimated_on_demand_cost_usd"]
        batch_cost = batch["estimated_batch_cost_usd"] + batch["estimated_on_demand_cost_usd"]

        # The switch: the backfill of the 30 days with Nova reuses the batch's vectors.
        nova = titan | {
            "image_embedder": BedrockEmbedder(endpoint_url=bedrock, model=NOVA.model_id),
            "image_vectors": batch_table,
        }
        calls = bedrock_state.calls
        for day in days:
            assert materialize(assets, resources=nova, partition_key=day).success
        backfill_calls = bedrock_state.calls - calls
        store = titan["object_store"]
        spaces = sorted({key.split("/")[1] for key in store.list_keys(f"{SIMILARITY_PREFIX}/")})
        manifests = {space: read_manifest(store, space, "history") for space in spaces}
        unmixed = all(
            m is not None and index_space(m.model, m.dimension) == space
            for space, m in manifests.items()
        )
        table_models = {
            row["embedding_model"] for day in days for row in day_rows(titan, day).values()
        }
        nova_days = manifests[index_space(NOVA.model_id, 1024)].days()
        nova_complete = nova_days == {day: SALES_PER_DAY for day in days}
        for server in (runtime, control, cdn):
            server.shutdown()
    ratio = batch_cost / demand_cost if demand_cost else float("inf")
    met = ratio <= 0.55 and equal and backfill_calls == 0 and unmixed and nova_complete
    images = batch["images"]
    return {
        "name": "history re-embedded by batch",
        "figure": f"{DAYS} days, {images} images, {NOVA.name}: batch ${batch_cost:.4f} vs on demand "
        f"${demand_cost:.4f} = {ratio:.2f}x; {batch_s:.0f} s vs {demand_s:.0f} s; vectors "
        f"{'equal' if equal else 'DIFFER'}; backfill after it: {backfill_calls} calls; "
        f"{len(spaces)} indexes, {'none mixed' if unmixed else 'MIXED'}",
        "target": "cost <= 0.55x on demand, equal vectors, 0 calls after, no index mixing models",
        "met": met,
        "values": {
            "on_demand": {"seconds": round(demand_s, 1), "calls": demand_calls, **demand},
            "batch": {"seconds": round(batch_s, 1), "calls": batch_calls, **batch},
            "cost_ratio": round(ratio, 3),
            "vectors_equal": equal,
            "backfill_calls": backfill_calls,
            "index_spaces": {s: (m.model if m else None) for s, m in manifests.items()},
            "table_models": sorted(m for m in table_models if m),
            "nova_index_days_complete": nova_complete,
        },
    }


def _shas(res, days) -> list[str]:
    return sorted(
        {
            row["image_sha256"]
            for day in days
            for row in day_rows(res, day).values()
            if row["image_sha256"]
        }
    )
