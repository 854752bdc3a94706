"""Every environment variable the project reads, read in this one place and checked at start."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import date
from functools import cache

from smartgo_analytics.core.models import DEFAULT_MODEL, model_named
from smartgo_analytics.core.quicksight import DATASETS_BY_NAME
from smartgo_analytics.similarity.thresholds import QualityThresholds

DEPLOYMENTS = ("local", "prod")
SALES_SOURCES = ("database", "api")  # deployment_resources.py builds each
SALES_DATA_TABLE = "SalesData"  # the seed's DynamoDB table of analytics (DYNAMODB_TABLE)
CATALOG_TYPES = ("sql", "rest", "glue")


class ConfigurationError(Exception):
    """A setting is missing or malformed; the message names it."""


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigurationError(f"{name}={value} must be at least {minimum}")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None


def _quota(name: str) -> float | None:
    """A per-minute quota: unset (or 0) for none, else a positive number."""
    quota = _float(name, 0.0) or None
    if quota is not None and not (math.isfinite(quota) and quota > 0):
        raise ConfigurationError(f"{name}={quota} must be a positive number")
    return quota


def _list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _share(name: str, default: float) -> float:
    value = _float(name, default)
    if not 0 <= value <= 1:
        raise ConfigurationError(f"{name}={value} must be between 0 and 1")
    return value


@dataclass(frozen=True)
class Settings:
    deployment: str
    smartgo_home: str
    partitions_start: str
    dynamodb_table: str
    s3_bucket: str | None
    quicksight_prefix: str
    export_progress_table: str | None
    image_vectors_table: str | None
    stage: str
    tenant: str | None
    aws_region: str | None
    database_url_set: bool
    db_ssm_parameter: str | None
    bedrock_max_concurrency: int
    bedrock_requests_per_minute: float | None
    bedrock_tokens_per_minute: float | None
    embedding_dimension: int
    image_url_allowlist: list[str]
    download_concurrency: int
    embedding_worker_processes: int
    max_embedding_error_ratio: float
    season_hemisphere: str
    outage_allowance_s: float = 600.0
    embedding_model: str = DEFAULT_MODEL.model_id
    embedding_price_per_image: float | None = None
    bedrock_batch_role_arn: str | None = None
    bedrock_batch_min_images: int = 1000
    shadow_embedding_model: str = ""  # "": none
    shadow_embedding_dimension: int = 0
    iceberg_properties: dict[str, str] = field(default_factory=dict)
    slack_webhook_set: bool = False
    sns_topic_arn: str | None = None
    webserver_url: str = "http://127.0.0.1:3000"
    freshness_deadline_hour: int = 6
    quicksight_account_id: str | None = None
    quicksight_dataset_ids: dict[str, str] = field(default_factory=dict)
    asset_owners: list[str] = field(default_factory=lambda: ["team:data-engineering"])
    embedding_quality: QualityThresholds = QualityThresholds()
    # The comparables page beyond loopback: a token every request carries (SMARTGO_WEB_TOKEN), the
    # uploads and URL asks a client may send a minute, the host:port a URL ask may reach although
    # loopback or private (a test CDN; the pipeline's IMAGE_URL_ALLOWLIST does not apply to it).
    web_token: str | None = None
    web_asks_per_minute: int = 20
    web_picture_hosts: list[str] = field(default_factory=list)
    # The local demo's product pictures: 256-px "drawings", or "photos" of 2-5 MB (local/photos).
    demo_pictures: str = "drawings"
    # Where the day's sales are read (SMARTGO_SALES_SOURCE), and the API's settings when it is the
    # SmartGo API: its URL, pagination, the rest as options, and its token (a secret: only whether
    # it is set, or its SSM parameter).
    sales_source: str = "database"
    api_url: str | None = None
    api_pagination: str = "cursor"
    api_options: dict = field(default_factory=dict)
    api_token_set: bool = False
    api_token_ssm: str | None = None
    # An S3-compatible endpoint of its own (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL): what DuckDB
    # is pointed at to read the table's files (boto3 reads the same variables itself).
    s3_endpoint_url: str | None = None

    @property
    def catalog_properties(self) -> dict[str, str]:
        """The prod Iceberg catalog's pyiceberg properties: the configured ones, and the region
        (pyiceberg's Glue client and S3 file IO read it from here, not from AWS_REGION)."""
        if self.aws_region:
            return {"client.region": self.aws_region, **self.iceberg_properties}
        return dict(self.iceberg_properties)

    def configured_catalog(self) -> dict[str, str]:
        """`catalog_properties`; ConfigurationError when no catalog is configured."""
        if not self.catalog_properties.get("type"):
            raise ConfigurationError("ICEBERG_CATALOG_TYPE is not set (sql, rest or glue)")
        return self.catalog_properties


def _iceberg_properties() -> dict[str, str]:
    properties: dict[str, str] = {}
    raw = os.environ.get("ICEBERG_CATALOG_PROPERTIES")
    if raw:
        try:
            properties = {str(k): str(v) for k, v in json.loads(raw).items()}
        except (json.JSONDecodeError, AttributeError):
            raise ConfigurationError("ICEBERG_CATALOG_PROPERTIES is not a JSON object") from None
    for name, key in (
        ("ICEBERG_CATALOG_TYPE", "type"),
        ("ICEBERG_CATALOG_URI", "uri"),
        ("ICEBERG_WAREHOUSE", "warehouse"),
    ):
        if os.environ.get(name):
            properties[key] = os.environ[name]
    if properties.get("type") and properties["type"] not in CATALOG_TYPES:
        raise ConfigurationError(
            f"ICEBERG_CATALOG_TYPE={properties['type']!r} is not one of {', '.join(CATALOG_TYPES)}"
        )
    return properties


def _sales_source() -> str:
    source = os.environ.get("SMARTGO_SALES_SOURCE", "database").strip() or "database"
    if source not in SALES_SOURCES:
        raise ConfigurationError(
            f"SMARTGO_SALES_SOURCE={source!r} is not one of {', '.join(SALES_SOURCES)}"
        )
    return source


def _json(name: str) -> object:
    """The variable's JSON value; {} when unset; None when it is not JSON."""
    raw = os.environ.get(name)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def _api_options() -> dict:
    options = _json("SMARTGO_API_OPTIONS")
    if not isinstance(options, dict):
        raise ConfigurationError("SMARTGO_API_OPTIONS is not a JSON object")
    return options


def _quicksight_dataset_ids() -> dict[str, str]:
    ids = _json("QUICKSIGHT_DATASET_IDS")
    if ids == {}:
        return {}
    if not isinstance(ids, dict) or not all(isinstance(v, str) and v for v in ids.values()):
        raise ConfigurationError(
            "QUICKSIGHT_DATASET_IDS is not a JSON object of dataset name -> data-set id"
        )
    unknown = sorted(set(ids) - set(DATASETS_BY_NAME))
    if unknown:
        raise ConfigurationError(
            f"QUICKSIGHT_DATASET_IDS names unknown datasets {unknown}; "
            f"known: {', '.join(DATASETS_BY_NAME)}"
        )
    if not os.environ.get("QUICKSIGHT_ACCOUNT_ID"):
        raise ConfigurationError("QUICKSIGHT_DATASET_IDS is set but QUICKSIGHT_ACCOUNT_ID is not")
    return ids


_OWNER = re.compile(r"team:[A-Za-z0-9_-]+|[^@\s]+@[^@\s]+\.[^@\s]+")


def _owners() -> list[str]:
    owners = _list("ASSET_OWNERS") or ["team:data-engineering"]
    bad = [owner for owner in owners if not _OWNER.fullmatch(owner)]
    if bad:
        raise ConfigurationError(
            f"ASSET_OWNERS has {bad}: each owner is team:<name> or an email address"
        )
    return owners


@cache
def settings() -> Settings:
    deployment = os.environ.get("SMARTGO_DEPLOYMENT", "local").strip() or "local"
    if deployment not in DEPLOYMENTS:
        raise ConfigurationError(
            f"SMARTGO_DEPLOYMENT={deployment!r} is not one of {', '.join(DEPLOYMENTS)}"
        )
    partitions_start = os.environ.get("SMARTGO_PARTITIONS_START", "2024-01-01")
    try:
        date.fromisoformat(partitions_start)
    except ValueError:
        raise ConfigurationError(
            f"SMARTGO_PARTITIONS_START={partitions_start!r} is not a YYYY-MM-DD date"
        ) from None
    prefix = os.environ.get("QUICKSIGHT_PREFIX", "quicksight/")
    if prefix.startswith("/") or (prefix and not prefix.endswith("/")):
        raise ConfigurationError(f"QUICKSIGHT_PREFIX={prefix!r} must be relative and end with '/'")
    hemisphere = os.environ.get("SEASON_HEMISPHERE", "northern")
    if hemisphere not in ("northern", "southern"):
        raise ConfigurationError(f"SEASON_HEMISPHERE={hemisphere!r} must be northern or southern")
    ratio = _float("MAX_EMBEDDING_ERROR_RATIO", 0.05)
    if not 0 <= ratio <= 1:
        raise ConfigurationError(f"MAX_EMBEDDING_ERROR_RATIO={ratio} must be between 0 and 1")
    deadline = _int("FRESHNESS_DEADLINE_HOUR_UTC", 6, minimum=0)
    if deadline > 23:
        raise ConfigurationError(f"FRESHNESS_DEADLINE_HOUR_UTC={deadline} must be 0..23")
    allowance = _float("OUTAGE_ALLOWANCE_S", 600.0)
    if not (math.isfinite(allowance) and allowance >= 0):
        raise ConfigurationError(
            f"OUTAGE_ALLOWANCE_S={allowance} must be a number of seconds, 0 or more"
        )
    quota = _quota("BEDROCK_REQUESTS_PER_MINUTE")
    token_quota = _quota("BEDROCK_TOKENS_PER_MINUTE")
    stage = os.environ.get("STAGE", "dev")
    model_id = os.environ.get("EMBEDDING_MODEL") or DEFAULT_MODEL.model_id
    try:
        model = model_named(model_id)
    except ValueError as error:
        raise ConfigurationError(f"EMBEDDING_MODEL: {error}") from None
    # TITAN_EMBEDDING_DIMENSION: this setting's name before there was a choice of model.
    dimension = _int("EMBEDDING_DIMENSION", _int("TITAN_EMBEDDING_DIMENSION", 1024))
    try:
        model.check_dimension(dimension)
    except ValueError as error:
        raise ConfigurationError(f"EMBEDDING_DIMENSION={dimension}: {error}") from None
    shadow = os.environ.get("SHADOW_EMBEDDING_MODEL") or ""
    shadow_dimension = _int("SHADOW_EMBEDDING_DIMENSION", dimension)
    if shadow:
        try:
            model_named(shadow).check_dimension(shadow_dimension)
        except ValueError as error:
            raise ConfigurationError(f"SHADOW_EMBEDDING_MODEL: {error}") from None
    price = _float("EMBEDDING_PRICE_PER_IMAGE", -1.0)
    if price != -1.0 and not (math.isfinite(price) and price >= 0):
        raise ConfigurationError(f"EMBEDDING_PRICE_PER_IMAGE={price} must be 0 or more (USD)")
    demo_pictures = os.environ.get("DEMO_PICTURES", "drawings")
    if demo_pictures not in ("drawings", "photos"):
        raise ConfigurationError(f"DEMO_PICTURES={demo_pictures!r} must be drawings or photos")
    return Settings(
        web_token=os.environ.get("SMARTGO_WEB_TOKEN") or None,
        web_asks_per_minute=_int("WEB_ASKS_PER_MINUTE", 20),
        web_picture_hosts=_list("WEB_PICTURE_HOSTS"),
        demo_pictures=demo_pictures,
        sales_source=_sales_source(),
        api_url=os.environ.get("SMARTGO_API_URL") or None,
        api_pagination=os.environ.get("SMARTGO_API_PAGINATION") or "cursor",
        api_options=_api_options(),
        api_token_set=bool(os.environ.get("SMARTGO_API_TOKEN")),
        api_token_ssm=os.environ.get("SMARTGO_API_TOKEN_SSM") or None,
        s3_endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None,
        deployment=deployment,
        smartgo_home=os.environ.get("SMARTGO_HOME", ".smartgo"),
        partitions_start=partitions_start,
        dynamodb_table=os.environ.get("DYNAMODB_TABLE", SALES_DATA_TABLE),
        s3_bucket=os.environ.get("S3_BUCKET") or None,
        quicksight_prefix=prefix,
        export_progress_table=os.environ.get("EXPORT_PROGRESS_TABLE_NAME") or None,
        image_vectors_table=os.environ.get("IMAGE_VECTORS_TABLE") or None,
        stage=stage,
        tenant=os.environ.get("TENANT") or None,
        aws_region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        database_url_set=bool(os.environ.get("SMARTGO_DATABASE_URL")),
        db_ssm_parameter=os.environ.get("SMARTGO_DB_SSM_PARAMETER") or None,
        bedrock_max_concurrency=_int("BEDROCK_MAX_CONCURRENCY", 16),
        bedrock_requests_per_minute=quota,
        bedrock_tokens_per_minute=token_quota,
        embedding_dimension=dimension,
        embedding_model=model.model_id,
        embedding_price_per_image=None if price == -1.0 else price,
        bedrock_batch_role_arn=os.environ.get("BEDROCK_BATCH_ROLE_ARN") or None,
        bedrock_batch_min_images=_int("BEDROCK_BATCH_MIN_IMAGES", 1000, minimum=100),
        shadow_embedding_model=shadow,
        shadow_embedding_dimension=shadow_dimension,
        image_url_allowlist=_list("IMAGE_URL_ALLOWLIST"),
        download_concurrency=_int("IMAGE_DOWNLOAD_CONCURRENCY", 32),
        # A worker's threads mostly wait on the network, and only one of them runs Python at a time:
        # two workers per core keep the cores busy.
        embedding_worker_processes=_int(
            "EMBEDDING_WORKER_PROCESSES", min(2 * (os.cpu_count() or 1), 8)
        ),
        max_embedding_error_ratio=ratio,
        season_hemisphere=hemisphere,
        outage_allowance_s=allowance,
        iceberg_properties=_iceberg_properties(),
        slack_webhook_set=bool(os.environ.get("ALERT_SLACK_WEBHOOK_URL")),
        sns_topic_arn=os.environ.get("ALERT_SNS_TOPIC_ARN") or None,
        webserver_url=os.environ.get("DAGSTER_WEBSERVER_URL", "http://127.0.0.1:3000").rstrip("/"),
        freshness_deadline_hour=deadline,
        quicksight_account_id=os.environ.get("QUICKSIGHT_ACCOUNT_ID") or None,
        quicksight_dataset_ids=_quicksight_dataset_ids(),
        asset_owners=_owners(),
        embedding_quality=QualityThresholds(
            min_neighbour_agreement=_share("EMBEDDING_MIN_NEIGHBOUR_AGREEMENT", 0.5),
            max_drift=_share("EMBEDDING_MAX_DRIFT", 0.2),
            max_duplicate_share=_share("EMBEDDING_MAX_DUPLICATE_SHARE", 0.01),
        ),
    )
