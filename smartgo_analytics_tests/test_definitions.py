"""The definitions load in both deployments, without any network, and the schedule targets yesterday."""

import os
import subprocess
import sys
from datetime import UTC, datetime

from dagster import DefaultScheduleStatus, build_schedule_context

from smartgo_analytics.definitions import defs

LOAD = (
    "from smartgo_analytics.definitions import defs; "
    "print(sorted(type(r).__name__ for r in defs.resources.values()))"
)


def load(**env):
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SMARTGO_", "S3_", "ICEBERG_"))
    }
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", LOAD], capture_output=True, text=True, env=environment, timeout=120
    )


def test_definitions_load_locally_with_local_resources():
    result = load(SMARTGO_DEPLOYMENT="local")
    assert result.returncode == 0, result.stderr
    assert "LocalObjectStore" in result.stdout and "LocalVisualEmbedder" in result.stdout


def test_definitions_load_in_prod_with_aws_resources_and_no_network():
    result = load(
        SMARTGO_DEPLOYMENT="prod",
        S3_BUCKET="carousel-dev-analytics",
        SMARTGO_DB_SSM_PARAMETER="/tf/dev/smartgo/database/config",
        ICEBERG_CATALOG_TYPE="glue",
        AWS_REGION="eu-west-1",
    )
    assert result.returncode == 0, result.stderr
    assert "S3ObjectStore" in result.stdout and "BedrockEmbedder" in result.stdout


def test_prod_without_a_bucket_fails_naming_the_setting():
    result = load(
        SMARTGO_DEPLOYMENT="prod",
        SMARTGO_DATABASE_URL="postgresql://x@db/smartgo",
        ICEBERG_CATALOG_TYPE="glue",
    )
    assert result.returncode != 0 and "S3_BUCKET is not set" in result.stderr


def test_the_schedule_runs_every_asset_for_the_previous_day_at_three_utc():
    context = build_schedule_context(
        scheduled_execution_time=datetime(2025, 1, 16, 3, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    schedule = defs.resolve_schedule_def("daily_analytics_schedule")
    requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2025-01-15"]
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING  # no switch to flip
    job = defs.resolve_job_def("daily_analytics_job")
    all_keys = defs.get_repository_def().asset_graph.get_all_asset_keys()
    assert set(job.asset_layer.executable_asset_keys) == set(all_keys)


def test_production_runs_are_sized_for_photos_by_the_job_and_by_the_ecs_launcher():
    import yaml

    from smartgo_analytics.schedules import daily_analytics_job

    with open("deploy/dagster.yaml") as config:
        launcher = yaml.safe_load(config)["run_launcher"]
    assert launcher["class"] == "EcsRunLauncher"
    sized = launcher["config"]["run_resources"]
    tags = daily_analytics_job.tags
    assert tags["ecs/cpu"] == sized["cpu"] and tags["ecs/memory"] == sized["memory"]
    # At least two vCPU (the embedding step's decodes use the cores) and 4 GiB (1 GiB measured).
    assert int(sized["cpu"]) >= 2048 and int(sized["memory"]) >= 4096
