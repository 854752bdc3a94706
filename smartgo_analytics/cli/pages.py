"""Comparables: the command, and the page (`web`)."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys

from smartgo_analytics.cli.output import UsageError, print_rows, say
from smartgo_analytics.local.stack import smartgo_home
from smartgo_analytics.settings import settings


def cmd_comparables(args) -> int:
    # Imported here: the page's command (`web`) does not need it loaded twice over, and the
    # other commands of this module do not need it at all.
    from smartgo_analytics.comparables import SHOWN, ComparablesError, Source, comparables

    try:
        found = comparables(
            product_id=args.product_id,
            image=args.image,
            tenant=args.tenant,
            category=args.category,
            condition=args.condition,
            k=args.k,
            any_category=args.any_category,
            source=Source(
                why_no_vector=_why_no_vector,
                cache_dir=smartgo_home() / "cache" / "similarity_index",
            ),
        )
    except ComparablesError as error:
        raise UsageError(str(error)) from None
    band = found.suggested
    if args.format == "json":
        say(json.dumps(found.as_json()))
        return 0
    if args.format == "table":
        by = f" (vectors of {found.model})" if found.model else ""
        say(f"{len(found.items)} sold items of {found.tenant} most like {found.query}{by}:")
    print_rows(found.rows(), list(SHOWN), args.format)
    asked = found.asked or {}
    condition = f" in {asked['condition']} condition" if asked.get("condition") else ""
    categories = ", ".join(f"{c} {n}" for c, n in (found.categories or {}).items())
    summary = (
        f"suggested price{condition} {band.median:.2f} (p25 {band.p25:.2f}, p75 {band.p75:.2f}; "
        f"similarity-weighted, from {band.comparables} comparables: {categories})\n"
        f"strength: {found.strength.verdict if found.strength else 'unknown'}"
    )
    print(summary, file=sys.stderr if args.format == "csv" else sys.stdout, flush=True)
    return 0


def _why_no_vector(product_id: str) -> str | None:
    # Imported here: pyiceberg's catalog takes 0.4 s to import, and most questions are answered
    # from the index alone.
    from smartgo_analytics.lake import why_no_vector

    return why_no_vector(product_id)


def cmd_web(args) -> int:
    # Imported here: the page's server and app are the `web` command's alone.
    import uvicorn

    from smartgo_analytics.web.answers import Answers
    from smartgo_analytics.web.app import create_app
    from smartgo_analytics.web.guard import LOOPBACK_HOSTS, Guard

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
    config = settings()
    if not all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos):
        if not (config.web_token or args.allowed_host):
            raise UsageError(
                f"--host {args.host} opens the page to the network: set SMARTGO_WEB_TOKEN (every "
                "request then carries it) or name the proxy's host with --allowed-host"
            )
        print(
            f"warning: the comparables page on {args.host}:{args.port} is open to the network "
            + ("behind its token" if config.web_token else "for " + ", ".join(args.allowed_host)),
            file=sys.stderr,
            flush=True,
        )
    answers = Answers(
        cache_dir=smartgo_home() / "cache" / "similarity_index",
        dagster_url=config.webserver_url,
        picture_hosts=tuple(config.web_picture_hosts),
    )
    guard = Guard(
        allowed_hosts=(*LOOPBACK_HOSTS, *args.allowed_host),
        token=config.web_token,
        asks_per_minute=config.web_asks_per_minute,
    )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    say(f"comparables page on http://{shown}:{args.port}/ (Ctrl-C stops it)")
    uvicorn.run(create_app(answers, guard), host=args.host, port=args.port, log_level="warning")
    return 0
