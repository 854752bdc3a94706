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
    worker_min_sales: int = Field(
        default=1_000,
        description="smaller days stay in the step's process (a worker takes ~1 s to start; the `embedding_throughput` benchmark)",
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
