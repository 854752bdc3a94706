"""Bedrock at production scale: a day paced to the account's quota, and an image embedded once."""

import random

import httpx

from benchmarks.pricing import CONCURRENCY, PricingRig, sales_table
from smartgo_analytics.embedding.workers import start_worker_server
from smartgo_analytics.resources.embeddings import BedrockEmbedder

WORKERS = 4
# (requests per minute, sales): a day of 5,000 sales at 6,000 a minute, and the lowest quota the
# pipeline must keep to, one request a second.
QUOTAS = ((6_000, 5_000), (60, 90))


def paced_to_quota() -> dict:
    """Each day over WORKERS processes against a Bedrock-compatible server that refuses requests
    beyond its quota; the server's own count of what it admitted and refused."""
    start_worker_server()
    runs = []
    for quota, sales in QUOTAS:
        with PricingRig(0.100, 0.150, sales=sales, quota=quota) as rig:
            rig.resources["image_embedder"] = BedrockEmbedder(
                endpoint_url=rig.servers["bedrock"].url,
                region_name="us-east-1",
                max_concurrency=CONCURRENCY,
                requests_per_minute=quota,
            )
            seconds, metadata = rig.materialize(
                "product_image_embeddings", worker_processes=WORKERS, worker_min_cpu_s=0
            )
            served = httpx.get(f"{rig.servers['bedrock'].url}/quota").json()
        requests = served["admitted"] + served["refused"]
        runs.append(
            {
                "quota_per_minute": quota,
                "sales": sales,
                "seconds": round(seconds, 1),
                "ratio_to_quota": served["admitted_per_minute"] / quota,
                "throttled_share": served["refused"] / requests,
                "sales_without_vector": sales - metadata["embedded"],
                "step_ratio_to_quota": metadata.get("ratio_to_quota"),
                "step_throttled_responses": metadata["throttled_responses"],
                "worker_processes": metadata["worker_processes"],
            }
        )
    met = all(
        r["ratio_to_quota"] >= 0.95
        and r["throttled_share"] <= 0.01
        and not r["sales_without_vector"]
        for r in runs
    )
    figure = "; ".join(
        f"{r['sales']:,} sales at {r['quota_per_minute']:,}/min: {r['ratio_to_quota']:.1%} of the quota, "
        f"{r['throttled_share']:.2%} throttled, {r['sales_without_vector']} lost"
        for r in runs
    )
    return {
        "name": "Bedrock calls paced to a quota",
        "figure": f"{figure} ({WORKERS} worker processes)",
        "target": ">= 95% of the quota, <= 1% throttled, 0 lost",
        "met": met,
        "values": {"runs": runs},
    }


def embedded_once(days: int = 10, sales: int = 500, seen_share: float = 0.3) -> dict:
    """`days` days in a row, each with `seen_share` of its images shown on earlier days: the
    embedding calls of each day against the images it shows for the first time."""
    rng = random.Random(7)
    new_per_day = [sales] + [sales - int(sales * seen_share)] * (days - 1)
    shown, plan = 0, []
    for new in new_per_day:
        plan.append([*range(shown, shown + new), *rng.sample(range(shown), sales - new)])
        shown += new
    rows = []
    with PricingRig(0.0, 0.0, sales=sales, images=shown) as rig:
        for n, images in enumerate(plan):
            day = f"2025-02-{n + 1:02d}"
            rig.add_day(day, sales_table(rig.servers["cdn"].url, sales, day, images))
            _, metadata = rig.materialize(
                "product_image_embeddings", "smartgo_sales_iceberg", day=day
            )
            rows.append(
                {
                    "day": day,
                    "new_images": new_per_day[n],
                    "embedding_calls": metadata["embedding_calls"],
                    "reused": metadata["embeddings_reused"],
                    "embedded": metadata["embedded"],
                }
            )
    calls = sum(r["embedding_calls"] for r in rows)
    new = sum(r["new_images"] for r in rows)
    exact = all(r["embedding_calls"] == r["new_images"] and r["embedded"] == sales for r in rows)
    return {
        "name": "an image embedded once, ever",
        "figure": f"{days} days of {sales} sales, {seen_share:.0%} of each later day's images seen "
        f"before: {calls:,} embedding calls for {new:,} new images, "
        f"{sum(r['reused'] for r in rows):,} reused",
        "target": "calls = new images, every day",
        "met": exact,
        "values": {"days": rows},
    }
