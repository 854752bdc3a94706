"""A day of 100,000 sales read through the SmartGo API source against the database source: the
reading process's peak memory and wall time, each in a process of its own, from the local stack's
Postgres and its SmartGo API server (keyset cursor pages of 1,000)."""

import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

SALES = 100_000
DAY = "2024-02-14"
LIMIT = 1024**3


def read_once(kind: str, dsn: str, url: str, token: str) -> dict:
    """In this process: the day read by one source and validated, as `smartgo_sales` does."""
    from smartgo_analytics.core.sales import validated_day
    from smartgo_analytics.resources.postgres import SmartGoDatabase
    from smartgo_analytics.resources.sales_api import SmartGoApi

    start = datetime.fromisoformat(DAY).replace(tzinfo=UTC)
    source = SmartGoDatabase(dsn=dsn) if kind == "database" else SmartGoApi(url=url, token=token)
    began = time.perf_counter()
    (table, rejected), _ = source.read_sold_products(
        start, start + timedelta(days=1), validated_day, 60.0
    )
    seconds = time.perf_counter() - began
    return {
        "seconds": round(seconds, 2),
        "rows": table.num_rows,
        "rejected": len(rejected),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def sales_api_source(sales: int = SALES) -> dict:
    from smartgo_analytics.local.demo_data import DEFAULT_SEED, seed_postgres
    from smartgo_analytics.local.stack import local_stack

    home = Path(tempfile.mkdtemp(prefix="smartgo-bench-api-"))
    with local_stack(home) as info:
        seed_postgres(
            info.postgres_uri, [date.fromisoformat(DAY)], info.cdn_url, sales, DEFAULT_SEED
        )
        runs = {}
        for kind in ("database", "api"):
            command = [sys.executable, "-m", "benchmarks.sales_api", kind, info.postgres_uri,
                       info.sales_api_url, info.sales_api_token]  # fmt: skip
            answer = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[kind] = json.loads(answer.stdout.strip().splitlines()[-1])
    api, database = runs["api"], runs["database"]
    assert api["rows"] == database["rows"] and api["rejected"] == database["rejected"], runs
    ratio = api["seconds"] / database["seconds"]
    return {
        "name": f"the SmartGo API source, one day of {sales:,} sales read and validated",
        "figure": f"API {api['seconds']} s, peak {api['peak_rss_mib']} MiB; database "
        f"{database['seconds']} s, peak {database['peak_rss_mib']} MiB ({ratio:.2f}x the "
        f"database's time) for {api['rows']} rows",
        "target": "API source <= 1024 MiB",
        "met": api["peak_rss_mib"] * 1024**2 <= LIMIT,
        "values": {"sales": sales, "runs": runs, "api_time_to_database": round(ratio, 2)},
    }


if __name__ == "__main__":
    print(json.dumps(read_once(*sys.argv[1:5])))
