"""The tables' commands: query, sql, maintain."""

from __future__ import annotations

from urllib.parse import urlsplit

from smartgo_analytics.cli.output import UsageError, print_rows, say
from smartgo_analytics.cli.stack import local_deployment
from smartgo_analytics.layout import PRICE_BANDS_TABLE, SALES_TABLE
from smartgo_analytics.local.stack import local_catalog_properties
from smartgo_analytics.settings import settings

# The tables `query` and `sql` read, by the name they answer to.
TABLES = {"smartgo_sales": SALES_TABLE, "price_bands": PRICE_BANDS_TABLE}


def cmd_query(args) -> int:
    # Imported here, as in each command of this module: pyiceberg and DuckDB take a second to
    # import, and the other commands (`comparables` first of all) need neither.
    from pyiceberg.expressions.parser import parse

    from smartgo_analytics.lake import deployment_catalog

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
    scan = table.scan(
        **({"row_filter": row_filter} if row_filter is not None else {}),
        selected_fields=columns or ("*",),
        limit=args.limit,
    )
    print_rows(scan.to_arrow().to_pylist(), list(columns or names), args.format)
    return 0


def _load_table(catalog, name: str, required: bool = True):
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError  # see cmd_query

    try:
        return catalog.load_table(TABLES[name])
    except (NoSuchTableError, NoSuchNamespaceError):
        if not required:
            return None
        raise UsageError(
            f"the table {TABLES[name]} does not exist yet: materialise a day first "
            "(locally, `make demo`)"
        ) from None


def cmd_sql(args) -> int:
    """SQL over the tables' current snapshots with DuckDB: it reads only the files and columns the
    query needs, from the lake directory or from S3."""
    # Imported here: see cmd_query.
    import duckdb

    from smartgo_analytics.core.lake_sql import connect_to_snapshots
    from smartgo_analytics.lake import deployment_catalog

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
    print_rows(rows, names, args.format)
    return 0


def _s3_access(catalog) -> dict[str, object]:
    """DuckDB's S3 settings from the AWS chain as boto3 resolves it (environment, profile, SSO,
    instance or task role), the region, and the S3 endpoint when one is set (AWS_ENDPOINT_URL_S3,
    AWS_ENDPOINT_URL, or the catalog's `s3.endpoint`)."""
    import boto3  # here: see cmd_query

    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise UsageError("no AWS credentials: the table is on S3 and the AWS chain found none")
    frozen = credentials.get_frozen_credentials()
    properties = getattr(catalog, "properties", {}) or {}
    region = settings().aws_region or session.region_name or properties.get("client.region")
    access: dict[str, object] = {
        "KEY_ID": frozen.access_key,
        "SECRET": frozen.secret_key,
        "SESSION_TOKEN": frozen.token,
        "REGION": region or "us-east-1",
    }
    endpoint = settings().s3_endpoint_url or properties.get("s3.endpoint")
    if endpoint:
        parts = urlsplit(endpoint)
        access |= {
            "ENDPOINT": parts.netloc,
            "URL_STYLE": "path",
            "USE_SSL": parts.scheme == "https",
        }
    return access


def cmd_maintain(args) -> int:
    # Imported here: see cmd_query (and the maintenance job brings Dagster).
    from smartgo_analytics.maintenance import MaintenanceConfig, report_metadata
    from smartgo_analytics.resources.iceberg import IcebergCatalog

    local_deployment()
    config = MaintenanceConfig(
        expire_older_than=args.expire_older_than,
        keep_last=args.keep_last,
        orphan_grace=args.orphan_grace,
        target_file_size=args.target_file_size,
    )
    with local_catalog_properties() as properties:
        report = IcebergCatalog(properties=properties).maintain(config.retention())
    for key, value in report_metadata(report).items():
        if key != "compaction":
            say(f"{key}: {value}")
    return 0
