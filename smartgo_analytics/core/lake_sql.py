"""DuckDB over an Iceberg snapshot: its iceberg extension comes from a PyPI wheel and loads offline."""

from __future__ import annotations

import contextlib
from pathlib import Path

import duckdb
import duckdb_ext

# The table answers to its own name, its namespace's and Athena's (`s3.` for an S3 Tables bucket).
NAMES = (
    "smartgo_sales",
    "pricing_intelligence.smartgo_sales",
    "s3.pricing_intelligence.smartgo_sales",
)


@contextlib.contextmanager
def connect_to_snapshot(metadata_location: str):
    """A DuckDB connection in which NAMES are views of the snapshot that `metadata_location`
    describes. DuckDB prunes files by partition and statistics and reads only the columns a query
    names."""
    extensions = Path(next(iter(duckdb_ext.__path__))) / "extensions"
    connection = duckdb.connect()
    try:
        connection.execute("SET extension_directory = ?", [str(extensions)])
        connection.execute("SET autoinstall_known_extensions = false")
        connection.execute("LOAD iceberg")
        location = metadata_location.removeprefix("file://").replace("'", "''")
        connection.execute("ATTACH ':memory:' AS s3")
        connection.execute("CREATE SCHEMA pricing_intelligence")
        connection.execute("CREATE SCHEMA s3.pricing_intelligence")
        for name in NAMES:
            connection.execute(f"CREATE VIEW {name} AS SELECT * FROM iceberg_scan('{location}')")
        yield connection
    finally:
        connection.close()
