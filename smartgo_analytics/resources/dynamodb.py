"""DynamoDB: the SalesData analytics table and the export-progress tracker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from pydantic import Field

from smartgo_analytics.resources.aws import AwsResource

PROGRESS_TTL_DAYS = 90


class DynamoDBError(Exception):
    """A table or index problem, named."""


class SalesDataTable(AwsResource):
    """The single-table `SalesData`; one GSI1 query returns a whole day."""

    table_name: str = Field(default="SalesData", description="DYNAMODB_TABLE")
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
            "ttl": int(time.time()) + PROGRESS_TTL_DAYS * 86_400,
            **fields,
        }
        serializer = TypeSerializer()
        self.boto3_client("dynamodb").put_item(
            TableName=self.table_name,
            Item={
                key: serializer.serialize(value) for key, value in item.items() if value is not None
            },
        )
