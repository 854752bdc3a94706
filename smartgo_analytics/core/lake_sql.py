"""DuckDB over Iceberg snapshots: its extensions come from PyPI wheels and load offline (`iceberg`
and `avro` always; `httpfs` for tables on S3)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import duckdb
import duckdb_ext

from smartgo_analytics.layout import NAMESPACE

# Each table answers to its own name, its namespace's and Athena's (`s3.` for an S3 Tables bucket).
S3_OPTIONS = ("KEY_ID", "SECRET", "SESSION_TOKEN", "REGION", "ENDPOINT", "URL_STYLE", "USE_SSL")


def names_of(table: str) -> tuple[str, str, str]:
    return table, f"{NAMESPACE}.{table}", f"s3.{NAMESPACE}.{table}"


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("'", "''") + "'"


@contextlib.contextmanager
def connect_to_snapshots(
    metadata_locations: Mapping[str, str], s3: Mapping[str, object] | None = None
):
    """A DuckDB connection in which each table (by `names_of`) is a view of the snapshot its
    metadata location describes. With `s3` (S3_OPTIONS: the credentials, region and endpoint), the
    files are read from S3 over `httpfs`. DuckDB prunes files by partition and statistics and reads
    only the columns a query names."""
    extensions = Path(next(iter(duckdb_ext.__path__))) / "extensions"
    connection = duckdb.connect()
    try:
        connection.execute("SET extension_directory = ?", [str(extensions)])
        connection.execute("SET autoinstall_known_extensions = false")
        connection.execute("LOAD iceberg")
        if s3 is not None:
            connection.execute("LOAD httpfs")
            options = ", ".join(
                f"{name} {_literal(s3[name])}" for name in S3_OPTIONS if s3.get(name) is not None
            )
            connection.execute(f"CREATE SECRET lake (TYPE s3, {options})")
        connection.execute("ATTACH ':memory:' AS s3")
        connection.execute(f"CREATE SCHEMA {NAMESPACE}")
        connection.execute(f"CREATE SCHEMA s3.{NAMESPACE}")
        for table, metadata_location in metadata_locations.items():
            scan = f"iceberg_scan({_literal(metadata_location.removeprefix('file://'))})"
            # DuckDB's Iceberg scan prunes every file for a filter on a list column (IS NULL, IS
            # NOT NULL: the manifests' counts are the elements'): such a column is read through
            # an identity slice, which the filter cannot be pushed below.
            lists = [
                row[0]
                for row in connection.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()
                if row[1].endswith("[]")
            ]
            replaced = ", ".join(f'"{c}"[:] AS "{c}"' for c in lists)
            columns = f"* REPLACE ({replaced})" if lists else "*"
            for name in names_of(table):
                connection.execute(f"CREATE VIEW {name} AS SELECT {columns} FROM {scan}")
        yield connection
    finally:
        connection.close()
