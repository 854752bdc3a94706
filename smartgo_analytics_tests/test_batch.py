"""Re-embedding history by Bedrock batch inference, against a loopback bedrock control plane that
reads and writes the real files on moto's S3."""

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance

from smartgo_analytics.core.batch import read_answers, record_id, records_jsonl
from smartgo_analytics.core.models.nova import MODEL as NOVA
from smartgo_analytics.layout import index_space
from smartgo_analytics.reembedding import reembed_history_job
from smartgo_analytics.resources.bedrock_batch import BedrockBatch
from smartgo_analytics.resources.embeddings import BedrockEmbedder
from smartgo_analytics.similarity.reader import read_manifest
from smartgo_analytics_tests import servers
from smartgo_analytics_tests.aws_calls import not_allowed, recorded_aws_calls
from smartgo_analytics_tests.pipeline import day_rows, insert_products, resources, run, sale

DAYS = ("2025-10-27", "2025-10-28")
ROLE = "arn:aws:iam::123456789012:role/smartgo-bedrock-batch"


@pytest.fixture(scope="module")
def batch_state(stack):
    return servers.BatchState(stack.aws_endpoint_url)


@pytest.fixture(scope="module")
def control_plane(batch_state):
    server = servers.bedrock_control_server(batch_state)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_jobs_records_and_answers_are_mapped_back_by_record_id():
    body = NOVA.body(servers.png((10, 20, 30)), 256)
    lines = records_jsonl([(record_id(1), body), (record_id(2), body)])
    assert [json.loads(line)["recordId"] for line in lines.splitlines()] == [
        "R0000000001",
        "R0000000002",
    ]
    assert json.loads(lines.splitlines()[0])["modelInput"] == json.loads(body)
    vector = [0.5] * 256
    out = (
        b"\n".join(
            json.dumps(line).encode()
            for line in (
                {
                    "recordId": "R0000000002",
                    "modelOutput": json.loads(servers.model_answer(servers.NOVA, vector)),
                },
                {
                    "recordId": "R0000000001",
                    "error": {"errorCode": 400, "errorMessage": "bad image"},
                },
                {
                    "recordId": "R0000000003",
                    "modelOutput": {"embeddings": [{"embedding": [1.0] * 7}]},
                },
                {"no": "record"},
            )
        )
        + b"\nnot json\n"
    )
    answers = read_answers(out, NOVA, 256)
    assert list(answers.vectors) == ["R0000000002"]
    np.testing.assert_array_equal(answers.vectors["R0000000002"], np.float32(vector))
    assert answers.errors == {
        "R0000000001": "400 bad image",
        "R0000000003": "unusable answer: 7 values, asked for 256",
    }


def test_history_is_embedded_by_batch_then_backfilled_without_an_on_demand_call(
    stack,
    s3_bucket,
    bedrock,
    bedrock_calls,
    cdn,
    cdn_state,
    tmp_path,
    control_plane,
    batch_state,
    production_template,
):
    images = {}
    for n in range(8):
        images[f"/batch-{n}.png"] = servers.png((n * 30, 255 - n * 20, 60 + n * 10), (48 + n, 40))
    cdn_state.images.update(images)
    insert_products(
        stack.postgres_uri,
        [
            sale(f"BATCH-{n}", DAYS[n % 2], f"{cdn}/batch-{n}.png", tenant_id="batch-a")
            for n in range(8)
        ],
    )
    titan = resources(stack, s3_bucket, bedrock, cdn, tmp_path)
    for day in DAYS:
        run(titan, day)
    batch = dict(
        endpoint_url=control_plane,
        region_name="us-east-1",
        role_arn=ROLE,
        poll_s=0.05,
        min_images=3,
        min_records=2,
        max_records=3,
    )

    def with_model(dimension, **batch_fields):
        embedder = BedrockEmbedder(endpoint_url=bedrock, model=servers.NOVA, dimension=dimension)
        return titan | {
            "image_embedder": embedder,
            "bedrock_batch": BedrockBatch(**(batch | batch_fields)),
        }

    instance = DagsterInstance.ephemeral()

    def reembed(res, raise_on_error=True, **other):
        asked = {"first_day": DAYS[0], "last_day": DAYS[1], **other}
        config = {"ops": {"reembed_images": {"config": asked}}}
        return reembed_history_job.execute_in_process(
            run_config=config, resources=res, raise_on_error=raise_on_error, instance=instance
        )

    # Nova, by batch: one record answered with an error is tried again on demand.
    failing = hashlib.sha256(images["/batch-5.png"]).hexdigest()
    batch_state.failing_images = {failing}
    bedrock_calls.reset()
    with recorded_aws_calls() as actions:
        result = reembed(with_model(1024))
    # What batch inference calls is what the stack's run task role allows.
    assert {
        "bedrock:CreateModelInvocationJob",
        "bedrock:GetModelInvocationJob",
        "iam:PassRole",
    } <= actions
    assert not_allowed(actions, production_template, "RunTaskRole") == set()
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in event.event_specific_data.metadata.items()}
    assert metadata["images"] == 8 and metadata["kept_already"] == 0
    assert metadata["embedded_by_batch"] == 7 and metadata["failed_in_batch_then_on_demand"] == 1
    assert metadata["embedded_on_demand"] == 1 and metadata["errors"] == 0
    assert metadata["batch_job"].startswith(
        "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/"
    )
    assert metadata["batch_job"].count("model-invocation-job/") == 3  # 3 records a job at most
    assert metadata["estimated_batch_cost_usd"] == pytest.approx(7 * NOVA.batch_price_per_image)
    assert metadata["estimated_on_demand_cost_usd"] == pytest.approx(NOVA.price_per_image)
    assert bedrock_calls.calls == 1 and bedrock_calls.models == {servers.NOVA: 1}
    logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    progress = [line for line in logged if line.startswith("batch job")]
    assert any("InProgress" in line for line in progress) and "Completed" in " ".join(progress)
    assert titan["object_store"].list_keys("bedrock-batch/") == []  # its files are deleted
    batch_state.failing_images = set()

    # The backfill with Nova calls Bedrock for nothing: every vector is the batch's, and equal to
    # what an on-demand call answers for the same picture.
    bedrock_calls.reset()
    nova = with_model(1024)
    for day in DAYS:
        done = (
            run(nova, day).asset_materializations_for_node("product_image_embeddings")[0].metadata
        )
        assert done["embedding_calls"].value == 0 and done["embeddings_reused"].value == 4
        for n, row in sorted(day_rows(titan, day).items()):
            picture = images[f"/batch-{int(n.split('-')[1])}.png"]
            assert row["embedding_model"] == servers.NOVA
            np.testing.assert_allclose(
                row["embedding_vector"], servers.model_vector(servers.NOVA, picture, 1024), 1e-6
            )
    assert bedrock_calls.calls == 0

    # A job that fails is named in the run's failure; nothing is kept.
    batch_state.job_failure = "Model access is denied for amazon.nova-2-multimodal-embeddings-v1:0"
    failed = reembed(with_model(384), raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    reason = failure.step_failure_data.user_failure_data.description
    assert "batch job smartgo-reembed-2025-10-27-2025-10-28-" in reason
    assert "failed: Model access is denied" in reason and "Nothing of it was kept" in reason
    # A job that fails after an earlier one passed: what that one kept is named, and kept.
    batch_state.job_failure, batch_state.jobs_to_pass = "Service unavailable", 1
    failed = reembed(with_model(3072), raise_on_error=False)
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    reason = failure.step_failure_data.user_failure_data.description
    assert "failed: Service unavailable" in reason
    assert "Kept before it, in the image-vector cache" in reason
    assert "3 vectors (3 by 1 earlier jobs, 0 on demand)" in reason
    assert (
        len(
            titan["image_vectors"].known(
                servers.NOVA, 3072, [hashlib.sha256(b).hexdigest() for b in images.values()]
            )
        )
        == 3
    )
    # Another model's length in shadow, and fewer images than the threshold: on demand, one call
    # an image; that model's own index is built for the range from the table's rows and the kept
    # vectors, and the table and the serving index are left as they were.
    bedrock_calls.reset()
    store = titan["object_store"]
    serving = index_space(servers.NOVA, 1024)
    before = {day: day_rows(titan, day) for day in DAYS}
    served = read_manifest(store, serving, "batch-a")
    shadow = with_model(1024, min_images=100)
    small = reembed(shadow, model=servers.NOVA, dimension=256)
    (event,) = [e for e in small.all_events if e.event_type_value == "STEP_OUTPUT"]
    figures = {k: v.value for k, v in event.event_specific_data.metadata.items()}
    assert figures["embedded_on_demand"] == 8 and figures["batch_job"] == "none"
    assert figures["shadow_index_vectors"] == 8
    assert figures["shadow_index_space"] == index_space(servers.NOVA, 256)
    assert bedrock_calls.calls == 8
    assert {day: day_rows(titan, day) for day in DAYS} == before
    assert read_manifest(store, serving, "batch-a") == served
    shadowed = read_manifest(store, figures["shadow_index_space"], "batch-a")
    assert shadowed.model == servers.NOVA and shadowed.dimension == 256
    assert shadowed.days() == {DAYS[0]: 4, DAYS[1]: 4}


def test_a_wait_that_is_interrupted_stops_the_job(
    stack, s3_bucket, control_plane, batch_state, production_template
):
    from smartgo_analytics.resources.object_store import S3ObjectStore

    store = S3ObjectStore(
        bucket=s3_bucket, endpoint_url=stack.aws_endpoint_url, region_name="us-east-1"
    )
    batch = BedrockBatch(
        endpoint_url=control_plane, region_name="us-east-1", role_arn=ROLE, poll_s=0.05
    )
    batch_state.seconds = 30.0  # long enough to be running when the run is terminated
    try:
        with recorded_aws_calls() as actions:  # the job's whole life: made, waited for, stopped
            records = records_jsonl([(record_id(1), NOVA.body(servers.png((1, 2, 3)), 256))])
            with tempfile.TemporaryDirectory() as directory:
                (Path(directory) / "records.jsonl").write_bytes(records)
                job = batch.submit(store, NOVA, "interrupted", Path(directory) / "records.jsonl")

            def terminated(described: dict) -> None:
                raise KeyboardInterrupt  # what Dagster's termination raises in the step, in kind

            with pytest.raises(KeyboardInterrupt):
                batch.wait(job, terminated)
        assert batch_state.jobs[job.arn.rsplit("/", 1)[1]]["status"] == "Stopped"
        assert "bedrock:StopModelInvocationJob" in actions
        assert not_allowed(actions, production_template, "RunTaskRole") == set()
    finally:
        batch_state.reset()
