"""`iceberg_maintenance_job`: the sales table's weekly care (compaction, snapshot expiry, removal
of unreferenced files), on Glue and SQL catalogs. S3 Tables maintains its tables itself: there the
job says so and does nothing."""

from dagster import (
    Config,
    DefaultScheduleStatus,
    OpExecutionContext,
    Output,
    ScheduleDefinition,
    job,
    op,
)
from pydantic import Field, field_validator

from smartgo_analytics.core.table_care import (
    MaintenanceReport,
    Retention,
)
from smartgo_analytics.core.units import parse_duration, parse_size
from smartgo_analytics.layout import SALES_TABLE
from smartgo_analytics.metadata import md_table
from smartgo_analytics.resources.iceberg import IcebergCatalog


class MaintenanceConfig(Config):
    expire_older_than: str = Field(default="7d", description="snapshots older than this expire")
    keep_last: int = Field(default=10, ge=1, description="snapshots always kept, however old")
    orphan_grace: str = Field(
        default="3d",
        description="unreferenced files younger than this are kept (writers in flight)",
    )
    target_file_size: str = Field(default="128MB", description="files below this are compacted")

    @field_validator("expire_older_than", "orphan_grace")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("target_file_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    def retention(self) -> Retention:
        return Retention(
            expire_older_than=parse_duration(self.expire_older_than),
            keep_last=self.keep_last,
            orphan_grace=parse_duration(self.orphan_grace),
            target_file_size=parse_size(self.target_file_size),
        )


def report_metadata(report: MaintenanceReport) -> dict:
    if report.skipped:
        return {"skipped": report.skipped}
    return {
        "partitions_compacted": len(report.partitions_compacted),
        "files_before_compaction": sum(p["files_before"] for p in report.partitions_compacted),
        "files_after_compaction": sum(p["files_after"] for p in report.partitions_compacted),
        "compaction": md_table(
            list(report.partitions_compacted),
            ["tenant_id", "year", "month", "files_before", "files_after"],
            20,
        ),
        "snapshots_expired": report.snapshots_expired,
        "snapshots_left": report.snapshots_left,
        "files_removed": report.files_removed,
        "bytes_freed": report.bytes_freed,
        "unreferenced_files_in_grace": report.unreferenced_in_grace,
        "commit_retries": report.commit_retries,
    }


@op(description="Compact small files, expire old snapshots, remove unreferenced files")
def maintain_sales_table(
    context: OpExecutionContext, config: MaintenanceConfig, iceberg: IcebergCatalog
):
    report = iceberg.maintain(config.retention())
    if report.skipped:
        context.log.info(f"maintenance skipped: {report.skipped}")
    else:
        context.log.info(
            f"compacted {len(report.partitions_compacted)} partition(s), expired "
            f"{report.snapshots_expired} snapshot(s), removed {report.files_removed} file(s) "
            f"({report.bytes_freed} bytes)"
        )
    return Output(None, metadata=report_metadata(report))


@job(
    description=f"Weekly care of {SALES_TABLE} (Glue and SQL catalogs; on S3 Tables, its settings)"
)
def iceberg_maintenance_job():
    maintain_sales_table()


# Sundays at 05:00 UTC, after the 03:00 daily run; on from the deployment's first start.
iceberg_maintenance_schedule = ScheduleDefinition(
    name="iceberg_maintenance_schedule",
    description="Sundays at 05:00 UTC: compaction, snapshot expiry and removal of unreferenced "
    f"files of {SALES_TABLE}",
    job=iceberg_maintenance_job,
    cron_schedule="0 5 * * 0",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)
