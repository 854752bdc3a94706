import os

import boto3
import psycopg
import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from smartgo_analytics.local.demo_data import PRODUCTS_DDL  # noqa: E402
from smartgo_analytics.local.stack import local_stack  # noqa: E402
from smartgo_analytics_tests import servers  # noqa: E402


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The project's own embedded stack: Postgres, moto (over HTTP), lake directory, CDN."""
    home = tmp_path_factory.mktemp("smartgo-home")
    with local_stack(home) as info:
        with psycopg.connect(info.postgres_uri) as conn:
            conn.execute(PRODUCTS_DDL)
        yield info


@pytest.fixture(scope="session")
def bedrock_state():
    return servers.BedrockState()


@pytest.fixture(scope="session")
def bedrock(bedrock_state):
    server = servers.bedrock_server(bedrock_state)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def bedrock_calls(bedrock_state):
    bedrock_state.reset()
    return bedrock_state


@pytest.fixture(scope="session")
def cdn_state():
    return servers.CdnState()


@pytest.fixture(scope="session")
def cdn(cdn_state):
    server = servers.hostile_cdn(cdn_state, slow_s=2.5)
    # Reached as "localhost" (allowlisted); "127.0.0.1" stays forbidden, so redirects to it are refused.
    yield f"http://localhost:{server.server_port}"
    server.shutdown()


@pytest.fixture
def s3_bucket(stack, request):
    name = f"test-{request.node.name.lower().replace('_', '-')[:40]}".strip("-")
    s3 = boto3.client("s3", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def production_template(tmp_path_factory):
    """The production stack's template (deploy/smartgo_deploy), as `make deploy-check` makes it,
    for the Glue catalog the prod tests use."""
    from deploy.smartgo_deploy.stack import Settings
    from deploy.smartgo_deploy.synth import synth

    return synth(Settings(catalog="glue", region="us-east-1"), tmp_path_factory.mktemp("stack"))


# Tiers: `make test-fast` runs what starts no process (no embedded Postgres or moto, no
# `dagster dev`, no browser, no CDK synthesis); `make test` runs everything.
PROCESS_FIXTURES = {"stack", "s3_bucket", "production_template", "prod_environment"}
PROCESS_MODULES = {  # modules whose tests start processes of their own
    "test_end_to_end",
    "test_local_stack",
    "test_concurrency",
    "test_image_memory",
    "test_deploy",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if "browser" in item.fixturenames or "page" in item.name and module == "test_end_to_end":
            item.add_marker(pytest.mark.browser)
        if module == "test_end_to_end":
            item.add_marker(pytest.mark.e2e)
        if PROCESS_FIXTURES & set(item.fixturenames) or module in PROCESS_MODULES:
            item.add_marker(pytest.mark.slow)
