from datetime import timedelta

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

SCHEDULE_HOUR_UTC = 3
# The size of each run's ECS task (dagster-aws's EcsRunLauncher reads these tags). On photos the
# embedding step is CPU-bound: about 250 sales a vCPU-minute (the `photo_throughput` benchmark),
# within 1 GiB whatever the day's size. docs/operating.md, "Sizing the runs", says how to change it.
RUN_SIZE_TAGS = {"ecs/cpu": "2048", "ecs/memory": "4096"}

daily_analytics_job = define_asset_job(
    "daily_analytics_job",
    selection=AssetSelection.all(),
    description="Every asset for one day: pricing intelligence and the QuickSight exports",
    tags=RUN_SIZE_TAGS,
)


@schedule(
    name="daily_analytics_schedule",
    job=daily_analytics_job,
    cron_schedule=f"0 {SCHEDULE_HOUR_UTC} * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,  # on from the deployment's first start
    description="At 03:00 UTC, every asset (pricing intelligence and the QuickSight exports) for "
    "the day that has just ended",
)
def daily_analytics_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
    return RunRequest(run_key=day, partition_key=day)
