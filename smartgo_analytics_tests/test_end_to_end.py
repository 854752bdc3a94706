"""A real `dagster dev` (webserver and daemon) on the local stack, driven through its GraphQL API."""

import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from smartgo_analytics.core.sales_table import DESCRIPTIONS
from smartgo_analytics.local.stack import running_stack
from smartgo_analytics.resources.iceberg import IcebergCatalog
from smartgo_analytics_tests import servers
from smartgo_analytics_tests.browser import browser_page
from smartgo_analytics_tests.servers import WebhookReceiver, graphql

DAYS = ["2025-01-13", "2025-01-14", "2025-01-15"]
ALL_ASSETS = servers.DAILY_ASSETS
PRICING = ALL_ASSETS[:3]
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""
STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } ... on PythonError { message } }
}"""
FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def backfill(
    url: str, assets: list[list[str]], partitions: list[str], timeout_s: float = 420
) -> str:
    params = {"assetSelection": [{"path": a} for a in assets], "partitionNames": partitions}
    launched = graphql(url, LAUNCH, params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = graphql(url, STATUS, id=launched["backfillId"])["partitionBackfillOrError"][
            "status"
        ]
        if status in FINISHED:
            return status
        time.sleep(3)
    pytest.fail(f"backfill {launched['backfillId']} did not finish in {timeout_s} s")


@pytest.fixture
def dagster_dev(tmp_path):
    receiver = WebhookReceiver()
    home = tmp_path / "home"
    args = ["--days", "3", "--end-date", DAYS[-1], "--sales-per-day", "100"]
    try:
        with servers.dagster_dev(home, args, ALERT_SLACK_WEBHOOK_URL=receiver.url) as url:
            yield url, home, receiver
    finally:
        receiver.server.shutdown()


def test_a_three_day_backfill_through_the_webserver_and_an_alert_for_the_partition_that_fails(
    dagster_dev,
):
    url, home, receiver = dagster_dev

    assert backfill(url, ALL_ASSETS, DAYS) in {"COMPLETED", "COMPLETED_SUCCESS"}

    catalog = IcebergCatalog(properties=running_stack(home).iceberg_properties)
    for day in DAYS:
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        rows = catalog.read_day(
            start, start + timedelta(days=1), ("product_id", "embedding_vector")
        )
        assert rows.num_rows == 99  # 100 sold, one null price quarantined
        lake = home / "lake" / "smartgo-analytics-local" / "quicksight"
        assert len((lake / "store_summaries" / f"{day}.json").read_text().splitlines()) == 11
        assert len((lake / "top_products" / f"{day}.json").read_text().splitlines()) == 20
    assert not [t for t in receiver.texts() if "a partition failed" in t]
    # The table's page in a real browser lists its columns with their descriptions.
    with browser_page() as page:
        page.goto(f"{url}/assets/smartgo_sales_iceberg")
        page.get_by_text("embedding_vector", exact=True).first.wait_for(timeout=60_000)
        # The columns' descriptions come with a later request than their names: waited for too.
        page.get_by_text(DESCRIPTIONS["embedding_vector"]).first.wait_for(timeout=60_000)
        shown = page.inner_text("body")
        page.screenshot(path=str(home / "smartgo_sales_iceberg.png"), full_page=True)
    for column in ("product_id", "sold_price", "sold_date", "tenant_id", "embedding_error"):
        assert column in shown, column
    assert DESCRIPTIONS["embedding_vector"] in shown
    # Each day's check results are recorded in the instance with their day, none left planned.
    from dagster import AssetCheckKey, AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        for asset, check in [
            ("smartgo_sales", "no_quarantined_rows"),
            ("product_image_embeddings", "embedding_error_ratio_within_budget"),
            ("smartgo_sales_iceberg", "iceberg_rows_match_source"),
        ]:
            records = instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(AssetKey(asset), check), limit=20
            )
            assert (
                sorted((r.partition, r.status.value) for r in records if r.status.value != "FAILED")
                == [(day, "SUCCEEDED") for day in DAYS]
                or check == "no_quarantined_rows"
            ), (check, [(r.partition, r.status.value) for r in records])
            assert sorted(r.partition for r in records) == DAYS, check

    # Break 2025-01-14: a fifth of its images now 404, far over the 5% error budget.
    with psycopg.connect(running_stack(home).postgres_uri) as conn:
        conn.execute(
            "UPDATE smartgo.products SET image_url = image_url || '.gone' "
            "WHERE id LIKE 'SG-20250114-%%' AND status = 'SOLD' AND id < 'SG-20250114-00020'"
        )
    assert backfill(url, PRICING, ["2025-01-14"]) in {"COMPLETED_FAILED", "FAILED", "COMPLETED"}

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [
        t for t in receiver.texts() if "a partition failed" in t
    ]:
        time.sleep(2)
    failed = [t for t in receiver.texts() if "a partition failed" in t]
    assert len(failed) == 1, receiver.texts()
    assert "partition: 2025-01-14" in failed[0]
    assert (
        "embedding_error_ratio_within_budget" in failed[0]
        and "product_image_embeddings" in failed[0]
    )
    assert f"run: {url}/runs/" in failed[0]
    assert "backfill: " in failed[0]
