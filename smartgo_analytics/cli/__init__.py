"""`smartgo-analytics`: run the pipelines on the embedded local stack, and look at what they wrote."""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import date

from smartgo_analytics.cli.output import EXIT_USAGE, UsageError
from smartgo_analytics.cli.pages import cmd_comparables, cmd_web
from smartgo_analytics.cli.stack import cmd_demo, cmd_dev, cmd_seed, cmd_stack_info
from smartgo_analytics.cli.tables import TABLES, cmd_maintain, cmd_query, cmd_sql
from smartgo_analytics.core.units import parse_duration, parse_size
from smartgo_analytics.local.stack import StackError
from smartgo_analytics.settings import ConfigurationError, settings


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


def _format_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help="output format"
    )


def _day(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date in YYYY-MM-DD form") from None


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line, exit code 2: what was wrong, not a page of usage."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
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
    _format_option(query)
    query.set_defaults(run=cmd_query)
    sql = commands.add_parser(
        "sql",
        help="SQL over the tables' current snapshots, with DuckDB (smartgo_sales, price_bands)",
    )
    sql.add_argument("query", help='e.g. "SELECT category, count(*) FROM smartgo_sales GROUP BY 1"')
    _format_option(sql)
    sql.set_defaults(run=cmd_sql)
    similar = commands.add_parser(
        "comparables",
        help="the sold items most like a product or a picture, and the price band they suggest",
    )
    which = similar.add_mutually_exclusive_group(required=True)
    which.add_argument("--product-id", help="a sold product: its own vector is the query")
    which.add_argument("--image", help="a picture's file path or http(s) URL, embedded now")
    similar.add_argument("--tenant", help="the tenant (needed when the answer is not unique)")
    similar.add_argument(
        "--category",
        help="only comparables of this category (asked by product: its own category by default)",
    )
    similar.add_argument(
        "--any-category",
        action="store_true",
        help="asked by product: comparables of every category, not only the product's",
    )
    similar.add_argument("--condition", help="only comparables in this condition (New, Good, ...)")
    similar.add_argument("--k", type=_positive, default=10, help="how many comparables")
    _format_option(similar)
    similar.set_defaults(run=cmd_comparables)
    web = commands.add_parser(
        "web", help="the comparables page: pictures, prices and the suggested band, in a browser"
    )
    web.add_argument("--port", type=_port, default=8765, help="port to serve on")
    web.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (another than loopback needs SMARTGO_WEB_TOKEN or --allowed-host)",
    )
    web.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host the page answers besides the loopback names: the name people reach it by "
        "through a proxy (repeat for several)",
    )
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
    maintain.add_argument(
        "--target-file-size",
        default="128MB",
        type=_checked(parse_size),
        help="compact files below this size (B, KB, MB, GB)",
    )
    maintain.set_defaults(run=cmd_maintain)
    return root


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
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
