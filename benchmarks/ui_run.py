"""One 200-sale day through the Dagster webserver, as a person clicks "Materialize all": how long the
run takes against the work its steps do, and how long the backfill waits before its run starts.

A real `smartgo-analytics dev` (webserver, daemon, code server) on the local stack; the day is
launched through the webserver's GraphQL API, and the figures are the run's own timestamps.
"""

import tempfile
import time
from pathlib import Path

from smartgo_analytics_tests.servers import DAILY_ASSETS, dagster_dev, graphql

DAY = "2025-01-15"
ASSETS = DAILY_ASSETS
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  }
}"""
RUNS = """
query Runs($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill {
      status timestamp
      runs(limit: 10) { runId status creationTime startTime endTime stepStats { stepKey startTime endTime } }
    }
  }
}"""


FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def run_backfill(url: str, params: dict, runs_query: str, timeout_s: float) -> dict:
    """Launch a backfill through the webserver's GraphQL API and wait for it to finish: what
    `runs_query` asks of it (its status, timestamp and runs)."""
    launched = graphql(url, LAUNCH, params=params)["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(str(launched))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        backfill = graphql(url, runs_query, id=launched["backfillId"])["partitionBackfillOrError"]
        if backfill["status"] in FINISHED:
            return backfill
        time.sleep(2)
    raise RuntimeError(f"the backfill did not finish in {timeout_s:.0f} s")


def ui_day_run() -> dict:
    home = Path(tempfile.mkdtemp(prefix="smartgo-bench-ui-"))
    args = ["--days", "1", "--end-date", DAY, "--sales-per-day", "200"]
    with dagster_dev(home, args) as url:
        params = {"assetSelection": [{"path": a} for a in ASSETS], "partitionNames": [DAY]}
        backfill = run_backfill(url, params, RUNS, 600)
    runs = backfill["runs"]
    if not runs or any(r["status"] != "SUCCESS" for r in runs):
        raise RuntimeError(f"runs did not all succeed: {[r['status'] for r in runs]}")
    first_start = min(r["startTime"] for r in runs)
    last_end = max(r["endTime"] for r in runs)
    run_s = last_end - first_start
    step_s = sum(s["endTime"] - s["startTime"] for r in runs for s in r["stepStats"])
    waited_s = min(r["creationTime"] for r in runs) - backfill["timestamp"]
    ratio = run_s / step_s
    return {
        "name": "one 200-sale day through the webserver",
        "figure": f"runs took {run_s:.1f} s for {step_s:.1f} s of step work ({ratio:.2f}x, {len(runs)} run(s)); "
        f"the first run was created {waited_s:.1f} s after the backfill",
        "target": "<= 2x the step work",
        "met": ratio <= 2,
        "values": {
            "run_s": run_s,
            "step_work_s": step_s,
            "ratio": ratio,
            "backfill_to_first_run_s": waited_s,
            "runs": len(runs),
        },
    }
