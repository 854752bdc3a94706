"""QuickSight: where the NDJSON datasets go, and the SPICE refresh that follows an export."""

from __future__ import annotations

import re

from botocore.exceptions import ClientError
from pydantic import Field

from smartgo_analytics.resources.aws import AwsResource

# QuickSight's IngestionId: letters, digits, '-' and '_', at most 128 characters.
_NOT_IN_INGESTION_ID = re.compile(r"[^A-Za-z0-9_-]")


def ingestion_id(dataset: str, first_day: str, last_day: str, run_id: str) -> str:
    """The same partition range and run always name the same ingestion, so a retried step does not
    start a second refresh."""
    days = first_day if first_day == last_day else f"{first_day}_{last_day}"
    return _NOT_IN_INGESTION_ID.sub("-", f"smartgo-{dataset}-{days}-{run_id}")[:128]


class QuickSightExport(AwsResource):
    """The datasets' prefix in the bucket and, when configured, the SPICE data sets to refresh.

    With `account_id` and `dataset_ids` (dataset name -> QuickSight data-set id) set, a successful
    export starts a full SPICE ingestion of each configured data set; unset, nothing is called.
    """

    prefix: str = Field(default="quicksight/", description="QUICKSIGHT_PREFIX")
    account_id: str | None = Field(default=None, description="QUICKSIGHT_ACCOUNT_ID")
    dataset_ids: dict[str, str] = Field(
        default_factory=dict, description="QUICKSIGHT_DATASET_IDS: dataset name -> data-set id"
    )

    def refresh(self, dataset: str, ingestion: str) -> dict[str, str] | None:
        """Start a SPICE ingestion of the dataset's QuickSight data set: its id, ARN and status, or
        None when no data set is configured for it."""
        data_set_id = self.dataset_ids.get(dataset)
        if not (self.account_id and data_set_id):
            return None
        client = self.boto3_client("quicksight")
        try:
            answer = client.create_ingestion(
                AwsAccountId=self.account_id,
                DataSetId=data_set_id,
                IngestionId=ingestion,
                IngestionType="FULL_REFRESH",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceExistsException":
                raise
            # The same run already started it (a retried step): report that one.
            answer = client.describe_ingestion(
                AwsAccountId=self.account_id, DataSetId=data_set_id, IngestionId=ingestion
            )["Ingestion"]
        return {
            "data_set_id": data_set_id,
            "ingestion_id": answer.get("IngestionId", ingestion),
            "status": answer.get("IngestionStatus", "UNKNOWN"),
            "arn": answer.get("Arn", ""),
        }
