"""DynamoDB: the SalesData analytics table, the export-progress tracker and the image vectors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from pydantic import Field

from smartgo_analytics.core.retry import drain
from smartgo_analytics.resources.aws import AwsResource
from smartgo_analytics.settings import SALES_DATA_TABLE

PROGRESS_TTL_DAYS = 90


class DynamoDBError(Exception):
    """A table or index problem, named."""


class SalesDataTable(AwsResource):
    """The single-table `SalesData`; one GSI1 query returns a whole day."""

    table_name: str = Field(default=SALES_DATA_TABLE, description="DYNAMODB_TABLE")
    index_name: str = Field(default="GSI1")

    def query_day(self, date: str) -> Iterator[list[dict[str, Any]]]:
        """Every item with GSI1PK = DATE#<date>, page by page, values as boto3's Decimal-based types."""
        client = self.boto3_client("dynamodb")
        deserializer = TypeDeserializer()
        pages = client.get_paginator("query").paginate(
            TableName=self.table_name,
            IndexName=self.index_name,
            KeyConditionExpression="GSI1PK = :day",
            ExpressionAttributeValues={":day": {"S": f"DATE#{date}"}},
        )
        try:
            for page in pages:
                yield [
                    {key: deserializer.deserialize(value) for key, value in item.items()}
                    for item in page["Items"]
                ]
        except ClientError as error:
            raise self._named(error) from None

    def _named(self, error: ClientError) -> DynamoDBError:
        code = error.response["Error"]["Code"]
        message = error.response["Error"].get("Message", "")
        where = f"DynamoDB table {self.table_name!r}"
        if code == "ResourceNotFoundException":
            return DynamoDBError(f"{where} does not exist (DYNAMODB_TABLE)")
        if code == "ValidationException" and "index" in message.lower():
            return DynamoDBError(f"{where} has no index {self.index_name!r}: {message}")
        if code in ("AccessDeniedException", "UnrecognizedClientException"):
            return DynamoDBError(
                f"no permission to query {where} index {self.index_name!r} ({code})"
            )
        return DynamoDBError(f"{where} index {self.index_name!r}: {code}: {message}")


class ExportProgressTracker(AwsResource):
    """The seed's progress record (`PK=EXPORT#<date>`, `SK=METADATA`), for the dashboards that read it.

    Does nothing when `table_name` is unset.
    """

    table_name: str | None = Field(default=None, description="EXPORT_PROGRESS_TABLE_NAME")

    def record(self, date: str, status: str, **fields: Any) -> None:
        if not self.table_name:
            return
        now = datetime.now(UTC)
        item = {
            "PK": f"EXPORT#{date}",
            "SK": "METADATA",
            "status": status,
            "updatedAt": now.isoformat(),
            "ttl": int(now.timestamp()) + PROGRESS_TTL_DAYS * 86_400,
            **fields,
        }
        serializer = TypeSerializer()
        self.boto3_client("dynamodb").put_item(
            TableName=self.table_name,
            Item={
                key: serializer.serialize(value) for key, value in item.items() if value is not None
            },
        )


class ImageVectors(AwsResource):
    """Every image's vector, once, by content: the item `image = <model>#<dimension>#<sha256>`
    holds its float32 bytes in `vector`. What lets an image be embedded once, ever: a day asks for
    its images a hundred at a time (BatchGetItem), so a lookup costs the day, not the years behind
    it. Without `table_name` nothing is stored and nothing is found."""

    table_name: str | None = Field(default=None, description="IMAGE_VECTORS_TABLE")

    def check(self) -> None:
        """DynamoDBError, naming the setting, when the table cannot be used."""
        if not self.table_name:
            return
        try:
            self.boto3_client("dynamodb").describe_table(TableName=self.table_name)
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "ResourceNotFoundException":
                raise DynamoDBError(
                    f"DynamoDB table {self.table_name!r} does not exist (IMAGE_VECTORS_TABLE): "
                    "create it with the hash key `image` (string)"
                ) from None
            raise DynamoDBError(f"DynamoDB table {self.table_name!r}: {code}") from None

    def _key(self, model_id: str, dimension: int, sha: str) -> dict:
        return {"image": {"S": f"{model_id}#{dimension}#{sha}"}}

    def _items(self, model_id: str, dimension: int, shas, projection: str) -> Iterator[dict]:
        client = self.boto3_client("dynamodb")
        table = self.table_name

        def get(keys: list[dict]) -> tuple[list[dict], list[dict]]:
            request = {table: {"Keys": keys, "ProjectionExpression": projection}}
            answer = client.batch_get_item(RequestItems=request)
            left = answer.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
            return answer["Responses"].get(table, []), left

        wanted = sorted(set(shas))
        for start in range(0, len(wanted), 100):
            keys = [self._key(model_id, dimension, sha) for sha in wanted[start : start + 100]]
            yield from drain(
                get,
                keys,
                gave_up=f"{table}: reading vectors",
                attempts=THROTTLED_SENDS,
                base_s=0.05,
            )

    def known(self, model_id: str, dimension: int, shas) -> set[str]:
        """Which of these images have a vector from this model, of this length."""
        if not self.table_name:
            return set()
        items = self._items(model_id, dimension, shas, "image")
        return {item["image"]["S"].rsplit("#", 1)[1] for item in items}

    def vectors(self, model_id: str, dimension: int, shas) -> dict[str, np.ndarray]:
        """The stored vectors of these images; one that is missing or unusable is left out."""
        if not self.table_name:
            return {}
        found = {}
        for item in self._items(model_id, dimension, shas, "image, vector"):
            data = item["vector"]["B"]
            vector = np.frombuffer(data, np.float32) if len(data) == 4 * dimension else None
            if vector is not None and np.isfinite(vector).all() and vector.any():
                found[item["image"]["S"].rsplit("#", 1)[1]] = vector
        return found

    def store(self, model_id: str, dimension: int, vectors: dict[str, np.ndarray]) -> None:
        if not self.table_name or not vectors:
            return
        client = self.boto3_client("dynamodb")
        now = datetime.now(UTC).isoformat()
        requests = [
            {
                "PutRequest": {
                    "Item": self._key(model_id, dimension, sha)
                    | {
                        "vector": {"B": np.asarray(vector, np.float32).tobytes()},
                        "embeddedAt": {"S": now},
                    }
                }
            }
            for sha, vector in vectors.items()
        ]
        write_items(client, self.table_name, requests)


# A table that throttles has its unprocessed items sent again, backing off to 1 s between sends,
# for up to about a minute.
THROTTLED_SENDS = 64


def write_items(client, table: str, requests: list[dict]) -> None:
    """BatchWriteItem's requests, 25 at a time, with what the table left unprocessed (it is
    throttling) sent again after a backoff; GaveUp when it is still left after THROTTLED_SENDS."""

    def put(batch: list[dict]) -> tuple[list[dict], list[dict]]:
        answer = client.batch_write_item(RequestItems={table: batch})
        return [], answer.get("UnprocessedItems", {}).get(table, [])

    for start in range(0, len(requests), 25):
        drain(
            put,
            requests[start : start + 25],
            gave_up=f"{table}: writing items",
            attempts=THROTTLED_SENDS,
            base_s=0.05,
        )


def create_image_vectors_table(dynamodb, table_name: str) -> None:
    dynamodb.create_table(
        TableName=table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "image", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "image", "KeyType": "HASH"}],
    )
