from dagster import DailyPartitionsDefinition

from smartgo_analytics.settings import settings

daily_partitions = DailyPartitionsDefinition(start_date=settings().partitions_start, timezone="UTC")
