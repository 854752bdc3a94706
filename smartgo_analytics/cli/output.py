"""What the commands print, and how they refuse: one line, exit 2."""

from __future__ import annotations

import csv
import json
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    pass


def say(message: str) -> None:
    print(message, flush=True)


def print_rows(rows: list[dict], names: list[str], form: str) -> None:
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
