"""The SmartGo Postgres database, read with psycopg 3."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from pydantic import Field

from smartgo_analytics.core.outage import Outage, Transient
from smartgo_analytics.core.sales import SOURCE_COLUMNS
from smartgo_analytics.resources.sales_source import SalesSource

SOLD_PRODUCTS_SQL = (
    f"SELECT {', '.join(SOURCE_COLUMNS)} FROM smartgo.products "
    "WHERE status = 'SOLD' AND sold_date >= %(start)s AND sold_date < %(end)s "
    "AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s) "
    "ORDER BY sold_date, id"
)

SSM_KEYS = ("host", "port", "database", "username", "password")


T = TypeVar("T")
# What a server that cannot be used as configured answers; anything else of a connection is
# worth trying again (refused, reset, timed out, starting up, shutting down, too many clients).
_PERMANENT_CONNECT = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "role ",
    "invalid dsn",
    "invalid connection option",
    "certificate",
)


class SmartGoDatabaseError(Exception):
    """Configuration or connection problem; the message never contains the password."""


class SmartGoDatabaseUnavailable(SmartGoDatabaseError, Transient):
    """The server could not be reached or dropped the connection: worth trying again."""


def conninfo_from_ssm_json(raw: str, parameter_name: str) -> tuple[str, int]:
    """The seed's SSM SecureString JSON as a libpq conninfo, and the query timeout in ms."""
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        raise SmartGoDatabaseError(f"SSM parameter {parameter_name} is not valid JSON") from None
    if not isinstance(config, dict):
        raise SmartGoDatabaseError(f"SSM parameter {parameter_name} is not a JSON object")
    missing = [key for key in SSM_KEYS if config.get(key) in (None, "")]
    if missing:
        raise SmartGoDatabaseError(f"SSM parameter {parameter_name} lacks {', '.join(missing)}")
    try:
        port = int(config["port"])
        connect_timeout_s = max(1, round(int(config.get("connectionTimeoutMs", 5000)) / 1000))
        query_timeout_ms = int(config.get("queryTimeoutMs", 30000))
    except (TypeError, ValueError):
        raise SmartGoDatabaseError(
            f"SSM parameter {parameter_name}: port, connectionTimeoutMs and queryTimeoutMs must be numbers"
        ) from None
    conninfo = make_conninfo(
        host=str(config["host"]),
        port=port,
        dbname=str(config["database"]),
        user=str(config["username"]),
        password=str(config["password"]),
        connect_timeout=connect_timeout_s,
        application_name="smartgo_analytics",
    )
    return conninfo, query_timeout_ms


class SmartGoDatabase(SalesSource):
    """Where the day's SOLD products come from (SMARTGO_SALES_SOURCE=database, the default).

    Configure exactly one of `dsn` (a libpq URI or conninfo) or `ssm_parameter_name` (the seed's
    SecureString JSON with host, port, database, username, password, connectionTimeoutMs,
    queryTimeoutMs).
    """

    dsn: str | None = Field(default=None, description="libpq connection string (a secret)")
    ssm_parameter_name: str | None = Field(
        default=None, description="SSM SecureString with the JSON config"
    )
    query_timeout_ms: int = Field(
        default=300_000, description="statement_timeout for the sales query"
    )
    fetch_batch_size: int = Field(
        default=2_000, description="rows per round trip of the server-side cursor"
    )
    kind: ClassVar[str] = "database"
    dependency: ClassVar[str] = "SmartGo Postgres"
    errors: ClassVar[tuple[type[Exception], ...]] = (SmartGoDatabaseError,)

    def _conninfo(self) -> tuple[str, int]:
        dsn, name = self.dsn, self.ssm_parameter_name
        if dsn and not name:
            return dsn, self.query_timeout_ms
        if dsn or not name:
            raise SmartGoDatabaseError(
                "configure exactly one of SMARTGO_DATABASE_URL or SMARTGO_DB_SSM_PARAMETER"
            )
        ssm = self.boto3_client("ssm")
        try:
            raw = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            raise SmartGoDatabaseError(f"SSM parameter {name} does not exist") from None
        return conninfo_from_ssm_json(raw, name)

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        conninfo, query_timeout_ms = self._conninfo()
        try:
            conn = psycopg.connect(conninfo, row_factory=dict_row)
        except psycopg.OperationalError as error:
            info = psycopg.conninfo.conninfo_to_dict(conninfo)
            where = f"{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"
            reason = str(error).replace(str(info.get("password") or "\0"), "***").splitlines()[0]
            permanent = any(marker in reason.lower() for marker in _PERMANENT_CONNECT)
            kind = SmartGoDatabaseError if permanent else SmartGoDatabaseUnavailable
            raise kind(f"cannot connect to the SmartGo database {where}: {reason}") from None
        conn.execute(f"SET statement_timeout = {int(query_timeout_ms)}")
        return conn

    def stream_sold_products(
        self, start: datetime, end: datetime
    ) -> Iterator[list[dict[str, Any]]]:
        """The SOLD products with start <= sold_date < end, in batches, through a server-side cursor."""
        try:
            with self.connect() as conn, conn.transaction():
                with conn.cursor(name="smartgo_sold_products") as cursor:
                    cursor.execute(
                        SOLD_PRODUCTS_SQL, {"start": start, "end": end, "tenant": self.tenant}
                    )
                    while batch := cursor.fetchmany(self.fetch_batch_size):
                        yield batch
        except (
            psycopg.errors.UndefinedTable,
            psycopg.errors.UndefinedColumn,
            psycopg.errors.InsufficientPrivilege,
        ) as error:
            raise SmartGoDatabaseError(
                f"the SmartGo database cannot be read: {error}".splitlines()[0]
            ) from None
        except psycopg.OperationalError as error:  # the connection broke, or the server went away
            raise SmartGoDatabaseUnavailable(
                f"the SmartGo database connection broke: {type(error).__name__}: {error}".splitlines()[
                    0
                ]
            ) from None

    def consumed(self, start: datetime, end: datetime, consume: Callable, outage: Outage) -> Any:
        """consume(the day's SOLD products), read again from the start each time the server cannot
        be reached or drops the connection, until it has been unavailable longer than the outage
        allowance (OutageTooLong). `consume` must be a function of the rows alone: it is called
        afresh."""
        return outage.call(lambda: consume(self.stream_sold_products(start, end)))
