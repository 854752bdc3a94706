"""Run every benchmark, print a table, write benchmarks/results.json.

python -m benchmarks            # all of them
python -m benchmarks iceberg    # the ones whose name contains a word

Each benchmark runs in a process of its own (`--one NAME`): its servers, its state and what its
peak memory measures are its own, whatever ran before it.
"""

import json
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.batch_reembedding import batch_reembedding
from benchmarks.bedrock_scale import embedded_once, paced_to_quota
from benchmarks.concurrent_backfill import backfill_runs_at_once
from benchmarks.faults import faults_that_pass
from benchmarks.iceberg_write import iceberg_write
from benchmarks.memory import day_of_100k_sales, day_of_photos
from benchmarks.pricing import (
    embedding_throughput,
    photo_throughput,
    unchanged_rematerialisation,
)
from benchmarks.quicksight_backfill import quicksight_backfill
from benchmarks.sales_api import sales_api_source
from benchmarks.similarity import comparables_price_error, similarity_index_at_1m
from benchmarks.ui_run import ui_day_run
from benchmarks.web import comparables_page

BENCHMARKS = [
    photo_throughput,
    embedding_throughput,
    iceberg_write,
    day_of_100k_sales,
    day_of_photos,
    sales_api_source,
    quicksight_backfill,
    unchanged_rematerialisation,
    ui_day_run,
    paced_to_quota,
    embedded_once,
    batch_reembedding,
    comparables_price_error,
    similarity_index_at_1m,
    comparables_page,
    backfill_runs_at_once,
    faults_that_pass,
]
RESULTS = Path(__file__).with_name("results.json")


def in_own_process(name: str) -> dict:
    """The benchmark run by a process of its own; its result (a failure is a result, not met)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--one", name],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    result = None
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(RESULT_LINE):
            result = json.loads(line[len(RESULT_LINE) :])
        else:
            print(line, end="", flush=True)
    code = child.wait()
    if result is None:
        return {"name": name, "figure": f"failed (exit {code}): see its output above",
                "target": "runs", "met": False}  # fmt: skip
    return result


RESULT_LINE = "BENCHMARK-RESULT "


def main(argv: list[str]) -> int:
    logging.getLogger("dagster").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if argv[:1] == ["--one"]:
        (benchmark,) = [b for b in BENCHMARKS if b.__name__ == argv[1]]
        print(RESULT_LINE + json.dumps(benchmark(), default=str), flush=True)
        return 0
    chosen = [b for b in BENCHMARKS if not argv or any(word in b.__name__ for word in argv)]
    if not chosen:
        names = ", ".join(b.__name__ for b in BENCHMARKS)
        print(f"no benchmark's name contains {' or '.join(argv)}; they are: {names}")
        return 2
    results = []
    whole = time.perf_counter()
    for benchmark in chosen:
        print(f"running {benchmark.__name__} ...", flush=True)
        started = time.perf_counter()
        result = in_own_process(benchmark.__name__)
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        results.append(result)
        print(
            f"  {result['figure']}  (target {result['target']}: {'met' if result['met'] else 'NOT met'})",
            flush=True,
        )
    whole_s = round(time.perf_counter() - whole)
    print(f"\nthe whole run: {whole_s} s", flush=True)
    width = max(len(r["name"]) for r in results)
    print()
    print(f"{'benchmark':<{width}}  {'figure':<72}  {'target':<46}  met")
    for r in results:
        print(
            f"{r['name']:<{width}}  {r['figure']:<72}  {r['target']:<46}  {'yes' if r['met'] else 'NO'}"
        )
    run = {"run_seconds": whole_s, "run_of": "all"}
    if argv and RESULTS.exists():
        # A partial run replaces its own figures and keeps the others, and the whole run's time.
        fresh = {r["name"]: r for r in results}
        before = json.loads(RESULTS.read_text())
        results = [fresh.pop(r["name"], r) for r in before["results"]] + list(fresh.values())
        run = {
            "run_seconds": before.get("run_seconds"),
            "run_of": f"{before.get('run_of', 'all')}; then {' '.join(argv)} again",
        }
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                **run,
                "machine": {
                    "cpus": __import__("os").cpu_count(),
                    "python": platform.python_version(),
                },
                "results": results,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
