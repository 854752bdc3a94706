"""The local stack's commands: demo, seed, dev, stack-info."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from smartgo_analytics.cli.output import UsageError, say
from smartgo_analytics.deployment import this_deployment
from smartgo_analytics.local.stack import (
    LOCAL_BUCKET,
    StackError,
    check_port_free,
    child_environment,
    local_stack,
    running_stack,
    smartgo_home,
    use_dagster_home,
)
from smartgo_analytics.settings import settings

PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


def local_deployment() -> None:
    if not this_deployment().local:
        raise UsageError(
            "this command runs on the embedded local stack: unset SMARTGO_DEPLOYMENT or set it to local"
        )


def _demo_days(args) -> list[date]:
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    end = args.end_date or yesterday
    if end > yesterday:
        raise UsageError(
            f"--end-date {end} is not a finished day yet (the last one is {yesterday}, UTC)"
        )
    days = [end - timedelta(days=n) for n in reversed(range(args.days))]
    first = date.fromisoformat(settings().partitions_start)
    if days[0] < first:
        raise UsageError(
            f"{days[0]} is before the first partition {first} (SMARTGO_PARTITIONS_START)"
        )
    return days


def _dagster_home(home: Path) -> Path:
    """The local Dagster instance's directory, its pools' limits set."""
    path = use_dagster_home(home, PROJECT_DAGSTER_YAML)
    # Imported here, as below: Dagster takes a second to import, and `stack-info` needs none of it.
    from dagster import DagsterInstance

    from smartgo_analytics.pools import set_pool_limits

    with DagsterInstance.get() as instance:
        set_pool_limits(instance)
    return path


def _seed(info, days: list[date], sales_per_day: int) -> None:
    from smartgo_analytics.local import demo_data  # with Dagster's resources: see _dagster_home

    started = time.monotonic()
    summary = demo_data.seed(info, days, sales_per_day)
    say(
        f"seeded {summary.days} day(s): {summary.products} SmartGo products, "
        f"{summary.sales_data_items} SalesData items ({time.monotonic() - started:.1f} s)"
    )


def cmd_demo(args) -> int:
    local_deployment()
    days = _demo_days(args)
    home = smartgo_home()
    with local_stack(home) as info:
        say(
            f"local stack up: Postgres {info.postgres_uri}, moto {info.aws_endpoint_url}, CDN {info.cdn_url}"
        )
        _seed(info, days, args.sales_per_day)
        _dagster_home(home)
        # The definitions, with Dagster, once the stack is up: see _dagster_home.
        from dagster import DagsterInstance

        from smartgo_analytics.definitions import defs

        job = defs.resolve_job_def("daily_analytics_job")
        summary: dict[str, dict] = {}
        failed = []
        with DagsterInstance.get() as instance:
            for day in days:
                started = time.monotonic()
                say(f"materialising {day} ...")
                result = job.execute_in_process(
                    partition_key=day.isoformat(),
                    instance=instance,
                    raise_on_error=False,
                    run_config=QUIET,
                )
                _collect(result, summary)
                not_passed = [
                    f"{e.asset_key.to_user_string()}:{e.check_name} ({e.severity.value})"
                    for e in result.get_asset_check_evaluations()
                    if not e.passed
                ]
                state = "ok" if result.success else "FAILED"
                say(
                    f"  {day}: {state} in {time.monotonic() - started:.1f} s"
                    + (f"; checks not passed: {', '.join(not_passed)}" if not_passed else "")
                )
                if not result.success:
                    failed.append((day, _failure(result)))
        _print_summary(summary, info)
    for day, error in failed:
        say(f"error: {day} failed: {error}")
    return 1 if failed else 0


# Step events stay in the instance's event log (and the UI); the terminal gets the INFO lines.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _failure(result) -> str:
    """Why the day failed, in one line: a failed blocking check's own description, or the error of
    the asset's own code (not Dagster's wrapper around it)."""
    from dagster import AssetCheckSeverity  # loaded by then: see _dagster_home

    from smartgo_analytics.core.alerts import root_cause

    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR:
            why = evaluation.description or "failed"
            return f"{evaluation.asset_key.to_user_string()} check {evaluation.check_name}: {why}"
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            message = root_cause(event.step_failure_data.error)
            return f"{event.step_key}: {message.strip().splitlines()[0]}"
    return "run failed"


SUMMARY_FIELDS = {
    "smartgo_sales": ("valid_rows", "quarantined_rows"),
    "product_image_embeddings": ("embedded", "errors"),
    "smartgo_sales_iceberg": ("rows", "rows_with_error"),
    "dynamodb_daily_metrics": ("items", "non_finite_numbers_nulled_in_run"),
    "price_bands": ("bands", "broken"),
    "similarity_index": ("day_vectors", "vectors_of_another_length"),
    "embedding_quality": ("vectors", "problems"),
}


# Where an asset's output is: Dagster's standard keys, which every materialisation carries.
OUTPUT_FIELDS = ("dagster/uri", "dagster/table_name")


def _collect(result, summary: dict[str, dict]) -> None:
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        key = materialization.asset_key.to_user_string()
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        entry = summary.setdefault(key, {"partitions": set(), "rows": 0, "errors": 0, "output": ""})
        entry["partitions"].add(materialization.partition)
        rows_field, errors_field = SUMMARY_FIELDS.get(
            key, ("records_exported", "duplicates_skipped")
        )
        entry["rows"] += int(metadata.get(rows_field) or 0)
        entry["errors"] += int(metadata.get(errors_field) or 0)
        for name in OUTPUT_FIELDS:
            if metadata.get(name):
                entry["output"] = str(metadata[name])
                break


def _print_summary(summary: dict[str, dict], info) -> None:
    say("")
    header = f"{'asset':<32} {'partitions':>10} {'rows':>8} {'errors':>7}  output"
    say(header)
    say("-" * len(header))
    for key in sorted(summary):
        entry = summary[key]
        say(
            f"{key:<32} {len(entry['partitions']):>10} {entry['rows']:>8} {entry['errors']:>7}  {entry['output']}"
        )
    say("")
    say(f"lake: {info.lake_dir}   Iceberg warehouse: {info.warehouse_uri}")
    say(f"look at the table: {_this_command()} query smartgo_sales --limit 5")
    say(f"see comparables in a browser: {_this_command()} web, then open http://127.0.0.1:8765/")


def _this_command() -> str:
    """This command as it can be typed again here: `.venv/bin/smartgo-analytics` under make."""
    script = Path(sys.argv[0])
    if script.name != "smartgo-analytics":
        return f"{os.path.relpath(sys.executable)} -m smartgo_analytics.cli"
    on_path = shutil.which("smartgo-analytics")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "smartgo-analytics"
    return os.path.relpath(script)


def cmd_seed(args) -> int:
    local_deployment()
    with local_stack() as info:
        _seed(info, _demo_days(args), args.sales_per_day)
    return 0


def cmd_dev(args) -> int:
    local_deployment()
    days = _demo_days(args)
    check_port_free(args.port, f"--port {args.port}")
    home = smartgo_home()
    with local_stack(home) as info:
        _seed(info, days, args.sales_per_day)
        dagster_home = _dagster_home(home)
        env = child_environment(info, dagster_home)
        # Warnings and errors only: run events are in the UI, not the terminal; `dagster dev` is the
        # command this Dagster release runs a local deployment with (`dg dev` needs a dg project).
        command = dagster_dev_command(args.port)
        env["PYTHONWARNINGS"] = "ignore:Function `dev_command` is superseded"
        say(
            f"Dagster UI: http://127.0.0.1:{args.port}   data: {home}   (Ctrl-C stops it and the stack)"
        )
        # Started in the Dagster home, where its instance configuration is, and nowhere else.
        child = subprocess.Popen(command, env=env, cwd=dagster_home, start_new_session=True)
        try:
            return child.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGINT)
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()


def cmd_stack_info(args) -> int:
    home = smartgo_home()
    try:
        info = running_stack(home)
        details = {
            "running": True,
            **{k: v for k, v in info.__dict__.items() if k != "sales_api_token"},
            "warehouse_uri": info.warehouse_uri,
            "iceberg_catalog": {
                "type": "sql",
                "uri": info.catalog_uri,
                "warehouse": info.warehouse_uri,
            },
        }
    except StackError:
        lake = home / "lake"
        details = {
            "running": False,
            "home": str(home),
            "lake_dir": str(lake),
            "bucket": LOCAL_BUCKET,
            "warehouse_uri": (lake / LOCAL_BUCKET / "warehouse").as_uri(),
            "postgres_data": str(home / "postgres"),
        }
    if args.json:
        say(json.dumps(details, indent=2))
    else:
        for key, value in details.items():
            say(f"{key}: {value}")
    return 0


def dagster_dev_command(port: int) -> list[str]:
    """`dagster dev` of the project's definitions on 127.0.0.1:`port`, logging warnings and errors."""
    return [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port),
            "--log-level", "warning", "-m", "smartgo_analytics.definitions"]  # fmt: skip
