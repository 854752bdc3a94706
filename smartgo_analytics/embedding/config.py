"""The embedding step's run configuration, as the Dagster UI's launchpad shows it."""

from dagster import Config
from pydantic import Field

from smartgo_analytics.settings import settings


class EmbeddingConfig(Config):
    max_error_ratio: float = Field(
        default_factory=lambda: settings().max_embedding_error_ratio,
        description="share of sales allowed to lack a vector before the day is blocked",
    )
    download_concurrency: int = Field(default_factory=lambda: settings().download_concurrency)
    worker_processes: int = Field(
        default_factory=lambda: settings().embedding_worker_processes,
        description="processes the day's sales are split over (each has its own interpreter lock)",
    )
    worker_min_cpu_s: float = Field(
        default=4.0,
        description="the worker processes start when the day's sales will cost at least this much "
        "CPU, judged from the first sales' cost (0: always); a pool takes about a second to start",
    )
    worker_probe_sales: int = Field(
        default=16, description="the first sales, run in the step's process to measure their cost"
    )
    batch_rows: int = Field(default=1_000, description="results per Parquet batch")
    outage_allowance_s: float = Field(
        default_factory=lambda: settings().outage_allowance_s,
        description="how long an outage of the CDN or Bedrock is waited out before the step fails",
    )
    own_failure_window_s: float = Field(
        default=30.0,
        description="how long one sale's download or call keeps failing while others get through "
        "before it is that sale's error",
    )
