"""Alerts: failed runs (daily and backfill partitions), failed ERROR checks, days late past the deadline.

A failed partition gets one alert, which names any failed blocking check; a run that succeeded with
a failed non-blocking ERROR check gets one too. The run-status sensors keep their own cursors, so
re-evaluating them sends nothing twice. Their functions return nothing, whatever the run: Dagster
refuses a tick that mixes a skip with a handled run, and would then hold its cursor and send the
tick's alerts again on every evaluation. A destination that fails is logged; the others still get
the alert, and it is not sent again.
"""

import json
from datetime import UTC, datetime, time, timedelta

from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from smartgo_analytics.core.alerts import (
    BACKFILL_TAG,
    WILL_RETRY_TAG,
    Alert,
    due_day,
    partition_of,
    redact,
    root_cause,
    short_error,
)
from smartgo_analytics.resources.alerts import Alerter
from smartgo_analytics.schedules import SCHEDULE_HOUR_UTC
from smartgo_analytics.settings import settings

ALERT_INTERVAL_S = 15


def _asset_name(step_key: str) -> str:
    return step_key.replace("__", "/")


@run_failure_sensor(
    name="failed_partition_alert",
    minimum_interval_seconds=ALERT_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="One alert per failed run: the job, the failed assets, the partition and a link",
)
def failed_partition_alert(context: RunFailureSensorContext, alerter: Alerter) -> None:
    run = context.dagster_run
    if run.tags.get(WILL_RETRY_TAG) == "true":
        context.log.info(f"run {run.run_id} will be retried; its retry alerts if it fails too")
        return
    failures = context.get_step_failure_events()
    assets = sorted({_asset_name(event.step_key) for event in failures if event.step_key})
    if not assets and run.asset_selection:
        assets = sorted(key.to_user_string() for key in run.asset_selection)
    failed_checks = _failed_error_checks(context.instance, run.run_id)
    if failed_checks:  # a blocking check stopped the day: say which, with its figures
        error = "failed checks: " + "; ".join(_describe(e) for e in failed_checks)
    elif failures and failures[0].step_failure_data.error:
        error = root_cause(failures[0].step_failure_data.error)
    else:
        error = context.failure_event.message or "run failed"
    _send(
        context,
        alerter,
        _run_alert(alerter, run, "SmartGo analytics: a partition failed", assets, error),
    )


def _send(context, alerter: Alerter, alert: Alert) -> None:
    for failure in alerter.send(alert):
        context.log.error(f"alert not delivered: {failure}")


def _run_alert(alerter: Alerter, run, title: str, assets, error: str) -> Alert:
    return Alert(
        title=title,
        job=run.job_name,
        asset_keys=tuple(assets),
        partition=partition_of(run.tags),
        backfill=run.tags.get(BACKFILL_TAG),
        error=redact(short_error(error)),
        run_url=alerter.run_url(run.run_id),
    )


def _failed_error_checks(instance, run_id: str) -> list:
    evaluations = (
        record.dagster_event.event_specific_data
        for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    )
    return [e for e in evaluations if not e.passed and e.severity == AssetCheckSeverity.ERROR]


def _describe(evaluation) -> str:
    summary = evaluation.description or ", ".join(
        f"{k}={v.value}" for k, v in list(evaluation.metadata.items())[:4]
    )
    return f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name} ({summary})"


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    name="failed_check_alert",
    minimum_interval_seconds=ALERT_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="An alert for a run that succeeded with failed ERROR-severity (non-blocking) checks",
)
def failed_check_alert(context: RunStatusSensorContext, alerter: Alerter) -> None:
    run = context.dagster_run
    failed = _failed_error_checks(context.instance, run.run_id)
    if not failed:
        return
    title = f"SmartGo analytics: check {failed[0].check_name} failed"
    assets = sorted({e.asset_key.to_user_string() for e in failed})
    _send(
        context,
        alerter,
        _run_alert(alerter, run, title, assets, "; ".join(_describe(e) for e in failed)),
    )


def _freshness_cursor(raw: str | None) -> tuple[datetime | None, str]:
    """(when the sensor first ran, the last day checked); a bare date is an older cursor."""
    if not raw:
        return None, ""
    try:
        state = json.loads(raw)
    except json.JSONDecodeError:
        return datetime.min.replace(tzinfo=UTC), raw
    return datetime.fromisoformat(state["since"]), state.get("checked", "")


def build_freshness_alert(
    asset_keys: list[AssetKey], deadline_hour: int | None = None, clock=lambda: datetime.now(UTC)
):
    @sensor(
        name="daily_freshness_alert",
        minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.RUNNING,
        description="Alerts once a day when yesterday is not materialised by "
        "FRESHNESS_DEADLINE_HOUR_UTC; days whose scheduled run came before the deployment's "
        "first start are not checked",
    )
    def daily_freshness_alert(context: SensorEvaluationContext, alerter: Alerter):
        now = clock()
        since, checked = _freshness_cursor(context.cursor)
        if since is None:  # the deployment's first start
            since = now
        deadline = settings().freshness_deadline_hour if deadline_hour is None else deadline_hour
        day = due_day(now, deadline)
        if day is None:
            context.update_cursor(json.dumps({"since": since.isoformat(), "checked": checked}))
            return SkipReason("before today's deadline")
        context.update_cursor(json.dumps({"since": since.isoformat(), "checked": day.isoformat()}))
        if checked >= day.isoformat():
            return SkipReason(f"{day} already checked")
        scheduled = datetime.combine(day + timedelta(days=1), time(SCHEDULE_HOUR_UTC), UTC)
        if scheduled < since:
            return SkipReason(
                f"{day} was due to run at {scheduled:%Y-%m-%d %H:%M} UTC, before this deployment "
                f"first ran ({since:%Y-%m-%d %H:%M} UTC): not checked"
            )
        late = [
            key.to_user_string()
            for key in asset_keys
            if day.isoformat() not in context.instance.get_materialized_partitions(key)
        ]
        if not late:
            return SkipReason(f"{day} is materialised everywhere")
        late_alert = Alert(
            title="SmartGo analytics: a day is late",
            asset_keys=tuple(sorted(late)),
            partition=day.isoformat(),
            error=f"not materialised by {deadline:02d}:00 UTC",
        )
        _send(context, alerter, late_alert)
        return None

    return daily_freshness_alert
