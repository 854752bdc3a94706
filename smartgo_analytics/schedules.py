from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

SCHEDULE_HOUR_UTC = 3

daily_analytics_job = define_asset_job(
    "daily_analytics_job",
    selection=AssetSelection.all(),
    description="Every asset for one day: pricing intelligence and the QuickSight exports",
)

# At 03:00 UTC, the run for the day that has just ended (the previous partition). Running from the
# deployment's first start: nobody has to switch it on.
daily_analytics_schedule = build_schedule_from_partitioned_job(
    daily_analytics_job,
    name="daily_analytics_schedule",
    description="At 03:00 UTC, every asset (pricing intelligence and the QuickSight exports) for "
    "the day that has just ended",
    hour_of_day=SCHEDULE_HOUR_UTC,
    minute_of_hour=0,
    default_status=DefaultScheduleStatus.RUNNING,
)
