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

daily_analytics_job = define_asset_job(
    "daily_analytics_job",
    selection=AssetSelection.all(),
    description="Every asset for one day: pricing intelligence and the QuickSight exports",
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
