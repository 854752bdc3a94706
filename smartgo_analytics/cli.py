"""`smartgo-analytics`: run the pipelines on the embedded local stack, and look at what they wrote."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from smartgo_analytics.lake import deployment_catalog, why_no_vector
from smartgo_analytics.local.stack import StackError, check_port_free, smartgo_home

EXIT_USAGE = 2
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"


class UsageError(Exception):
    pass


def say(message: str) -> None:
    print(message, flush=True)


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def _checked(parse):
    """An argparse type that checks the text with `parse` and keeps it as written."""

    def check(raw: str) -> str:
        try:
            parse(raw)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return raw

    return check


def _day(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date in YYYY-MM-DD form") from None


def _local_deployment() -> None:
    from smartgo_analytics.settings import settings

    deployment = settings().deployment
    if deployment != "local":
        raise UsageError(
            "this command runs on the embedded local stack: unset SMARTGO_DEPLOYMENT or set it to local"
        )


def _demo_days(args) -> list[date]:
    from smartgo_analytics.settings import settings

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
    """DAGSTER_HOME if set, else `<SMARTGO_HOME>/dagster` with the project's local instance config."""
    if os.environ.get("DAGSTER_HOME"):
        path = Path(os.environ["DAGSTER_HOME"]).resolve()
    else:
        path = home / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists() and PROJECT_DAGSTER_YAML.exists():
        shutil.copy(PROJECT_DAGSTER_YAML, config)
    os.environ["DAGSTER_HOME"] = str(path)
    from dagster import DagsterInstance

    from smartgo_analytics.pools import set_pool_limits

    with DagsterInstance.get() as instance:
        set_pool_limits(instance)
    return path


def _seed(info, days: list[date], sales_per_day: int) -> None:
    from smartgo_analytics.local import demo_data

    started = time.monotonic()
    summary = demo_data.seed(info, days, sales_per_day)
    say(
        f"seeded {summary.days} day(s): {summary.products} SmartGo products, "
        f"{summary.sales_data_items} SalesData items ({time.monotonic() - started:.1f} s)"
    )


def cmd_demo(args) -> int:
    from smartgo_analytics.local.stack import local_stack

    _local_deployment()
    days = _demo_days(args)
    home = smartgo_home()
    with local_stack(home) as info:
        say(
            f"local stack up: Postgres {info.postgres_uri}, moto {info.aws_endpoint_url}, CDN {info.cdn_url}"
        )
        _seed(info, days, args.sales_per_day)
        _dagster_home(home)
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
                say(f"  {day}: {state} in {time.monotonic() - started:.1f} s"
                    + (f"; checks not passed: {', '.join(not_passed)}" if not_passed else ""))  # fmt: skip
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
    from dagster import AssetCheckSeverity

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
    from smartgo_analytics.local.stack import local_stack

    _local_deployment()
    with local_stack() as info:
        _seed(info, _demo_days(args), args.sales_per_day)
    return 0


def cmd_dev(args) -> int:
    from smartgo_analytics.local.stack import local_stack, stack_environment

    _local_deployment()
    days = _demo_days(args)
    check_port_free(args.port, f"--port {args.port}")
    home = smartgo_home()
    with local_stack(home) as info:
        _seed(info, days, args.sales_per_day)
        dagster_home = _dagster_home(home)
        env = {**os.environ, **stack_environment(info), "DAGSTER_HOME": str(dagster_home)}
        # Warnings and errors only: run events are in the UI, not the terminal; `dagster dev` is the
        # command this Dagster release runs a local deployment with (`dg dev` needs a dg project).
        command = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(args.port),
                   "--log-level", "warning", "-m", "smartgo_analytics.definitions"]  # fmt: skip
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
    from smartgo_analytics.local.stack import LOCAL_BUCKET, running_stack

    home = smartgo_home()
    try:
        info = running_stack(home)
        details = {"running": True, **info.__dict__, "warehouse_uri": info.warehouse_uri,
                   "iceberg_catalog": {"type": "sql", "uri": info.catalog_uri, "warehouse": info.warehouse_uri}}  # fmt: skip
    except StackError:
        lake = home / "lake"
        details = {"running": False, "home": str(home), "lake_dir": str(lake), "bucket": LOCAL_BUCKET,
                   "warehouse_uri": (lake / LOCAL_BUCKET / "warehouse").as_uri(), "postgres_data": str(home / "postgres")}  # fmt: skip
    if args.json:
        say(json.dumps(details, indent=2))
    else:
        for key, value in details.items():
            say(f"{key}: {value}")
    return 0


# The tables `query` and `sql` read, by the name they answer to.
TABLES = {
    "smartgo_sales": "pricing_intelligence.smartgo_sales",
    "price_bands": "pricing_intelligence.price_bands",
}


def cmd_query(args) -> int:
    from pyiceberg.expressions.parser import parse

    with deployment_catalog() as catalog:
        table = _load_table(catalog, args.table)
    names = [f.name for f in table.schema().fields]
    columns = tuple(c.strip() for c in args.columns.split(",")) if args.columns else None
    unknown = [c for c in columns or () if c not in names]
    if unknown:
        raise UsageError(
            f"unknown column(s) {', '.join(unknown)}; the table has {', '.join(names)}"
        )
    try:
        row_filter = parse(args.where) if args.where else None
    except Exception as error:  # pyiceberg raises ParseException from pyparsing
        raise UsageError(f"--where {args.where!r} is not a filter expression: {error}") from None
    scan = table.scan(**({"row_filter": row_filter} if row_filter is not None else {}),
                      selected_fields=columns or ("*",), limit=args.limit)  # fmt: skip
    _print_rows(scan.to_arrow().to_pylist(), list(columns or names), args.format)
    return 0


def _load_table(catalog, name: str, required: bool = True):
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return catalog.load_table(TABLES[name])
    except (NoSuchTableError, NoSuchNamespaceError):
        if not required:
            return None
        raise UsageError(f"the table {TABLES[name]} does not exist yet: materialise a day first "
                         "(locally, `make demo`)") from None  # fmt: skip


def cmd_sql(args) -> int:
    """SQL over the tables' current snapshots with DuckDB: it reads only the files and columns the
    query needs, from the lake directory or from S3."""
    import duckdb

    from smartgo_analytics.core.lake_sql import connect_to_snapshots

    with deployment_catalog() as catalog:
        tables = {
            name: _load_table(catalog, name, required=name == "smartgo_sales") for name in TABLES
        }
        locations = {name: t.metadata_location for name, t in tables.items() if t is not None}
        s3 = (
            _s3_access(catalog) if any(loc.startswith("s3") for loc in locations.values()) else None
        )
    with connect_to_snapshots(locations, s3) as connection:
        try:
            result = connection.sql(args.query)
        except duckdb.Error as error:
            raise UsageError(f"the query failed: {str(error).splitlines()[0]}") from None
        if result is None:
            raise UsageError("the query returns no rows (use SELECT)")
        try:
            rows = result.to_arrow_table().to_pylist()
        except duckdb.Error as error:
            raise UsageError(f"the query failed: {str(error).splitlines()[0]}") from None
        names = result.columns
    _print_rows(rows, names, args.format)
    return 0


def _s3_access(catalog) -> dict[str, object]:
    """DuckDB's S3 settings from the AWS chain as boto3 resolves it (environment, profile, SSO,
    instance or task role), the region, and the S3 endpoint when one is set (AWS_ENDPOINT_URL_S3,
    AWS_ENDPOINT_URL, or the catalog's `s3.endpoint`)."""
    from urllib.parse import urlsplit

    import boto3

    from smartgo_analytics.settings import settings

    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise UsageError("no AWS credentials: the table is on S3 and the AWS chain found none")
    frozen = credentials.get_frozen_credentials()
    properties = getattr(catalog, "properties", {}) or {}
    region = settings().aws_region or session.region_name or properties.get("client.region")
    access: dict[str, object] = {"KEY_ID": frozen.access_key, "SECRET": frozen.secret_key,
                                 "SESSION_TOKEN": frozen.token, "REGION": region or "us-east-1"}  # fmt: skip
    endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or properties.get("s3.endpoint"))  # fmt: skip
    if endpoint:
        parts = urlsplit(endpoint)
        access |= {
            "ENDPOINT": parts.netloc,
            "URL_STYLE": "path",
            "USE_SSL": parts.scheme == "https",
        }
    return access


def cmd_maintain(args) -> int:
    from smartgo_analytics.local.stack import local_catalog_properties
    from smartgo_analytics.maintenance import MaintenanceConfig, report_metadata
    from smartgo_analytics.resources.iceberg import IcebergCatalog

    _local_deployment()
    config = MaintenanceConfig(expire_older_than=args.expire_older_than, keep_last=args.keep_last,
                               orphan_grace=args.orphan_grace, target_file_size=args.target_file_size)  # fmt: skip
    with local_catalog_properties() as properties:
        report = IcebergCatalog(properties=properties).maintain(config.retention())
    for key, value in report_metadata(report).items():
        if key != "compaction":
            say(f"{key}: {value}")
    return 0


def cmd_comparables(args) -> int:
    from smartgo_analytics.comparables import SHOWN, ComparablesError, comparables

    try:
        found = comparables(product_id=args.product_id, image=args.image, tenant=args.tenant,
                            category=args.category, condition=args.condition, k=args.k, why_no_vector=why_no_vector,
                            cache_dir=smartgo_home() / "cache" / "similarity_index")  # fmt: skip
    except ComparablesError as error:
        raise UsageError(str(error)) from None
    band = found.suggested
    if args.format == "json":
        say(json.dumps({"tenant": found.tenant, "query": found.query,
                        "suggested_price": band.__dict__, "comparables": found.rows()}))  # fmt: skip
        return 0
    if args.format == "table":
        say(f"{len(found.items)} sold items of {found.tenant} most like {found.query}:")
    _print_rows(found.rows(), list(SHOWN), args.format)
    summary = (f"suggested price {band.median:.2f} (p25 {band.p25:.2f}, p75 {band.p75:.2f}; "
               f"similarity-weighted, from {band.comparables} comparables)")  # fmt: skip
    print(summary, file=sys.stderr if args.format == "csv" else sys.stdout, flush=True)
    return 0


def cmd_web(args) -> int:
    import ipaddress
    import socket

    import uvicorn

    from smartgo_analytics.settings import settings
    from smartgo_analytics.web.app import Answers, create_app

    try:
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UsageError(f"--host {args.host!r} is not an address here: {error}") from None
    with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
        try:
            probe.bind(infos[0][4])
        except OSError as error:
            raise UsageError(
                f"--port: cannot serve on {args.host}:{args.port}: {error.strerror}"
            ) from None
    if not all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos):
        print(f"warning: the comparables page on {args.host}:{args.port} is open to every machine "
              "that reaches it, with no login", file=sys.stderr, flush=True)  # fmt: skip
    answers = Answers(cache_dir=smartgo_home() / "cache" / "similarity_index",
                      dagster_url=settings().webserver_url, why_no_vector=why_no_vector)  # fmt: skip
    shown = f"[{args.host}]" if ":" in args.host else args.host
    say(f"comparables page on http://{shown}:{args.port}/ (Ctrl-C stops it)")
    uvicorn.run(create_app(answers), host=args.host, port=args.port, log_level="warning")
    return 0


def _print_rows(rows: list[dict], names: list[str], form: str) -> None:
    if form == "json":
        for row in rows:
            say(json.dumps(row, default=str, ensure_ascii=False))
    elif form == "csv":
        # Lines end with "\n", as every other line this command prints (csv's default is "\r\n").
        writer = csv.DictWriter(
            sys.stdout, fieldnames=names, lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
    else:
        shown = [{k: _short(v) for k, v in row.items()} for row in rows]
        widths = {n: max([len(n), *(len(r[n]) for r in shown)]) for n in names}
        say("  ".join(n.ljust(widths[n]) for n in names))
        for row in shown:
            say("  ".join(row[n].ljust(widths[n]) for n in names))
        say(f"({len(rows)} rows)")


def _short(value) -> str:
    if isinstance(value, list):
        return f"[{len(value)} floats]"
    return "" if value is None else str(value)[:48]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line, exit code 2: what was wrong, not a page of usage."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    from smartgo_analytics.core.table_care import parse_duration, parse_size

    root = _Parser(prog="smartgo-analytics", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def days_options(p, default_days: int) -> None:
        p.add_argument(
            "--days",
            type=_positive,
            default=default_days,
            help="how many days, ending at --end-date",
        )
        p.add_argument(
            "--end-date",
            type=_day,
            default=None,
            help="last day, YYYY-MM-DD (default: yesterday, UTC)",
        )
        p.add_argument("--sales-per-day", type=_positive, default=200, help="demo sales a day")

    demo = commands.add_parser(
        "demo", help="start the local stack, seed, materialise every asset, summarise"
    )
    days_options(demo, 2)
    demo.set_defaults(run=cmd_demo)
    dev = commands.add_parser(
        "dev", help="start the local stack, seed, and run `dagster dev` on 127.0.0.1"
    )
    days_options(dev, 3)
    dev.add_argument("--port", type=_port, default=3000, help="the Dagster UI's port on 127.0.0.1")
    dev.set_defaults(run=cmd_dev)
    seed = commands.add_parser("seed", help="seed the local stack's demo data only")
    days_options(seed, 2)
    seed.set_defaults(run=cmd_seed)
    info = commands.add_parser("stack-info", help="where the local data lives")
    info.add_argument("--json", action="store_true", help="print JSON instead of lines")
    info.set_defaults(run=cmd_stack_info)
    query = commands.add_parser("query", help="read the Iceberg table")
    query.add_argument("table", choices=sorted(TABLES), help="the table to read")
    query.add_argument(
        "--where", help="pyiceberg filter, e.g. \"tenant_id == 'carousel-labs' and month == 1\""
    )
    query.add_argument("--columns", help="comma-separated column names (default: all)")
    query.add_argument("--limit", type=_positive, default=20, help="at most this many rows")
    query.add_argument("--format", choices=["table", "json", "csv"], default="table",
                       help="output format")  # fmt: skip
    query.set_defaults(run=cmd_query)
    sql = commands.add_parser(
        "sql",
        help="SQL over the tables' current snapshots, with DuckDB (smartgo_sales, price_bands)",
    )
    sql.add_argument("query", help='e.g. "SELECT category, count(*) FROM smartgo_sales GROUP BY 1"')
    sql.add_argument("--format", choices=["table", "json", "csv"], default="table",
                     help="output format")  # fmt: skip
    sql.set_defaults(run=cmd_sql)
    similar = commands.add_parser(
        "comparables",
        help="the sold items most like a product or a picture, and the price band they suggest",
    )
    which = similar.add_mutually_exclusive_group(required=True)
    which.add_argument("--product-id", help="a sold product: its own vector is the query")
    which.add_argument("--image", help="a picture's file path or http(s) URL, embedded now")
    similar.add_argument("--tenant", help="the tenant (needed when the answer is not unique)")
    similar.add_argument("--category", help="only comparables of this category")
    similar.add_argument("--condition", help="only comparables in this condition (New, Good, ...)")
    similar.add_argument("--k", type=_positive, default=10, help="how many comparables")
    similar.add_argument("--format", choices=["table", "json", "csv"], default="table",
                         help="output format")  # fmt: skip
    similar.set_defaults(run=cmd_comparables)
    web = commands.add_parser(
        "web", help="the comparables page: pictures, prices and the suggested band, in a browser"
    )
    web.add_argument("--port", type=_port, default=8765, help="port to serve on")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to serve on (another than loopback opens the page to the network)")  # fmt: skip
    web.set_defaults(run=cmd_web)
    maintain = commands.add_parser(
        "maintain",
        help="compact small files, expire snapshots and remove unreferenced files of the local table",
    )
    maintain.add_argument(
        "--expire-older-than",
        default="7d",
        type=_checked(parse_duration),
        help="expire snapshots older than this (s, m, h, d)",
    )
    maintain.add_argument(
        "--keep-last", type=_positive, default=10, help="always keep this many snapshots"
    )
    maintain.add_argument(
        "--orphan-grace",
        default="3d",
        type=_checked(parse_duration),
        help="keep unreferenced files younger than this",
    )
    maintain.add_argument("--target-file-size", default="128MB", type=_checked(parse_size),
                          help="compact files below this size (B, KB, MB, GB)")  # fmt: skip
    maintain.set_defaults(run=cmd_maintain)
    return root


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from smartgo_analytics.settings import ConfigurationError, settings

    args = parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so everything the stack started is stopped. SIGINT is handled
    # even when a shell started this in the background with it ignored: children then get it back.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        settings()
        return args.run(args)
    except (UsageError, StackError, ConfigurationError) as error:
        print(f"smartgo-analytics: error: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("smartgo-analytics: interrupted, local stack stopped", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
