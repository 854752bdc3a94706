"""Bedrock batch inference: a job's records written to S3 as JSONL, the job created with a service
role, polled until it ends, and its answers read back."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError
from pydantic import Field

from smartgo_analytics.core.batch import ENDED_WITHOUT_ANSWERS, FINISHED, Answers, read_answers
from smartgo_analytics.core.models.base import EmbeddingModel
from smartgo_analytics.core.retry import poll
from smartgo_analytics.resources.aws import AwsResource
from smartgo_analytics.resources.object_store import ObjectStore, S3ObjectStore


class BatchJobFailed(Exception):
    """A batch job that ended without answers (failed, stopped, expired); the message names it."""


@dataclass(frozen=True)
class BatchJob:
    arn: str
    name: str
    input_key: str
    output_key: str  # the job's answers are under `<output_key><job id>/`


class BedrockBatch(AwsResource):
    """Batch inference jobs of the `bedrock` control plane, their files on the object store (S3)
    under `prefix`. `role_arn` is the service role Bedrock reads and writes those files with (S3
    read of the input, write of the output, on that prefix)."""

    role_arn: str | None = Field(default=None, description="BEDROCK_BATCH_ROLE_ARN")
    prefix: str = "bedrock-batch/"
    min_images: int = Field(
        default=1000,
        description="images a range needs to go by batch (BEDROCK_BATCH_MIN_IMAGES); fewer go on "
        "demand. Bedrock takes at least 100 records a job",
    )
    min_records: int = Field(
        default=100,
        ge=1,
        description="records a job at least (Bedrock's least): fewer go on demand",
    )
    max_records: int = Field(
        default=50_000, description="records a job at most (the account's batch quota)"
    )
    max_bytes: int = Field(
        default=1_000_000_000, description="bytes of a job's input file at most (Bedrock's quota)"
    )
    poll_s: float = Field(default=60.0, description="seconds between two looks at a running job")
    timeout_hours: int = Field(default=24, description="the job's own limit, 24 to 168")

    def require(self, store: ObjectStore) -> None:
        if not self.role_arn or not isinstance(store, S3ObjectStore):
            raise ValueError(
                "batch inference needs BEDROCK_BATCH_ROLE_ARN (a service role Bedrock can read "
                "and write the bucket with) and the S3 object store (S3_BUCKET); below "
                "BEDROCK_BATCH_MIN_IMAGES images a range is embedded on demand"
            )

    def submit(self, store: ObjectStore, model: EmbeddingModel, name: str, jsonl: Path) -> BatchJob:
        """The records (a file of `core/batch.records_jsonl`) put on S3, and a job created for them."""
        self.require(store)
        key = f"{self.prefix}{name}/input/records.jsonl"
        store.put_file(key, jsonl)
        output = f"{self.prefix}{name}/output/"
        arn = self.boto3_client("bedrock").create_model_invocation_job(
            jobName=name,
            roleArn=self.role_arn,
            modelId=model.model_id,
            inputDataConfig={
                "s3InputDataConfig": {"s3Uri": store.uri(key), "s3InputFormat": "JSONL"}
            },
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": store.uri(output)}},
            timeoutDurationInHours=self.timeout_hours,
        )["jobArn"]
        return BatchJob(arn, name, key, output)

    def wait(self, job: BatchJob, progress: Callable[[dict], None], sleep=time.sleep) -> dict:
        """Poll the job until it ends, `progress` told of every look; its last description, or
        BatchJobFailed naming the job, its status and Bedrock's message. A wait that ends
        otherwise (the run terminated, the control plane refusing) stops the job."""
        client = self.boto3_client("bedrock")

        def look() -> dict | None:
            try:
                described = client.get_model_invocation_job(jobIdentifier=job.arn)
            except ClientError as error:
                if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) < 500:
                    raise
                return None  # the control plane blinked: look again at the next poll
            progress(described)
            status = described.get("status")
            if status in ENDED_WITHOUT_ANSWERS:
                raise BatchJobFailed(
                    f"batch job {job.name} ({job.arn}) {str(status).lower()}: "
                    f"{described.get('message') or 'Bedrock gave no reason'}"
                )
            return described if status in FINISHED else None

        try:
            return poll(look, self.poll_s, sleep)
        except BaseException as error:  # the run was stopped, or could not look: stop paying
            if not isinstance(error, BatchJobFailed):
                with contextlib.suppress(Exception):
                    client.stop_model_invocation_job(jobIdentifier=job.arn)
            raise

    def answers(
        self, store: ObjectStore, job: BatchJob, model: EmbeddingModel, dimension: int
    ) -> Answers:
        """The job's answers: Bedrock writes `<output>/<job id>/<input name>.out`."""
        key = f"{job.output_key}{job.arn.rsplit('/', 1)[1]}/records.jsonl.out"
        return read_answers(store.get_bytes(key), model, dimension)
