"""The comparables page: a day materialised against the loopback servers (pictures on moto's S3,
shown through presigned URLs), the app served by uvicorn on 127.0.0.1, asked over HTTP and in a
real browser (Debian's Chromium through Playwright); the local lake's picture route and its
refusals on a lake directory of its own."""

import contextlib
import io
import threading
import time

import boto3
import httpx
import pytest
import uvicorn
from dagster import materialize
from PIL import Image

from smartgo_analytics.comparables import comparables
from smartgo_analytics.lake_directory import LakeDirectory
from smartgo_analytics.layout import IMAGE_PREFIX
from smartgo_analytics.resources.object_store import S3ObjectStore
from smartgo_analytics.web.app import Answers, answer_json, create_app
from smartgo_analytics_tests import servers
from smartgo_analytics_tests.browser import browser_page
from smartgo_analytics_tests.conftest import insert_products
from smartgo_analytics_tests.test_pricing_pipeline import resources
from smartgo_analytics_tests.test_similarity import ASSETS, RUN_CONFIG, day_sales, pictures

DAY, TENANT = "2025-08-20", "web-shop"
SECRET = "web-page-secret-never-shown"


@contextlib.contextmanager
def serving(app):
    """The app on a free port of 127.0.0.1 for the block; its URL."""
    port = servers.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def lake(stack, bedrock, cdn, cdn_state, tmp_path_factory):
    """A day of a tenant's sales materialised with its similarity index; the resources."""
    bucket = "test-web-page"
    boto3.client("s3", endpoint_url=stack.aws_endpoint_url, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    urls = pictures(cdn_state, cdn, "web")
    insert_products(stack.postgres_uri, day_sales(TENANT, DAY, urls, 18, "WB"))
    res = resources(stack, bucket, bedrock, cdn, tmp_path_factory.mktemp("web"))
    assert materialize(ASSETS, resources=res, partition_key=DAY, run_config=RUN_CONFIG).success
    return res


@pytest.fixture(scope="module")
def page(stack, lake):
    # The page's own keys: the secret must never reach a page, the key id only in a signature.
    store = S3ObjectStore(
        bucket=lake["object_store"].bucket,
        endpoint_url=stack.aws_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="AKIAWEBPAGE",
        aws_secret_access_key=SECRET,
    )
    answers = Answers(
        store=store,
        resources=lake,
        dagster_url="http://127.0.0.1:3000",
        catalog=lambda: contextlib.nullcontext(lake["iceberg"].catalog()),
    )
    with serving(create_app(answers)) as url:
        yield url


def test_the_api_answers_as_the_command_and_refuses_what_it_cannot_answer(lake, page):
    asked = f"WB-{DAY}-4"
    answer = httpx.get(f"{page}/api/comparables", params={"product_id": asked, "k": 5}).json()
    assert answer == answer_json(comparables(product_id=asked, k=5, resources=lake))
    assert len(answer["comparables"]) == 5 and answer["tenant"] == TENANT

    picture = servers.png((30, 140, 200))
    by_picture = httpx.post(
        f"{page}/api/comparables",
        params={"tenant": TENANT, "k": 3},
        content=picture,
        headers={"Content-Type": "image/png"},
    )
    assert by_picture.status_code == 200 and len(by_picture.json()["comparables"]) == 3

    for params, status, message in [
        ({"product_id": "SG-NOPE-1"}, 400, "unknown product 'SG-NOPE-1'"),
        ({"product_id": "../etc/passwd"}, 400, "unknown product"),
        ({"product_id": asked, "k": "0"}, 400, "k must be at least 1"),
        ({"product_id": asked, "k": "lots"}, 400, "k must be a whole number"),
        ({"image_url": "file:///etc/passwd", "tenant": TENANT}, 400, "must start with http"),
        (
            {"image_url": "http://169.254.169.254/latest/meta-data/", "tenant": TENANT},
            400,
            "cannot fetch",
        ),
        ({"product_id": asked, "tenant": "no-such-shop"}, 400, "no sold items"),
    ]:
        refused = httpx.get(f"{page}/api/comparables", params=params)
        assert (refused.status_code, message in refused.json()["error"]) == (status, True), (
            refused.text
        )

    too_big = httpx.post(
        f"{page}/api/comparables",
        params={"tenant": TENANT},
        content=b"\xff" * (11 * 2**20),
        headers={"Content-Type": "image/jpeg"},
    )
    assert too_big.status_code == 413
    bomb = httpx.post(
        f"{page}/api/comparables",
        params={"tenant": TENANT},
        content=servers.bomb_png(),
        headers={"Content-Type": "image/png"},
    )
    assert bomb.status_code == 400 and "decompression bomb" in bomb.json()["error"]

    sale = httpx.get(f"{page}/api/sales/{asked}", params={"tenant": TENANT})
    assert sale.status_code == 200 and sale.json()[0]["product_id"] == asked
    assert "embedding_vector" not in sale.json()[0]
    assert httpx.get(f"{page}/api/sales/SG-NOPE-1").status_code == 404
    # No secret in what the page sends: the presigned URLs carry a signature, never the key.
    shown = httpx.get(f"{page}/", params={"product_id": asked}).text
    assert "X-Amz-Signature=" in shown and "AKIAWEBPAGE" in shown and SECRET not in shown
    assert SECRET not in httpx.get(f"{page}/api/comparables", params={"product_id": asked}).text


def test_a_picture_asked_by_its_url_is_fetched_once_and_shown(lake, page, cdn, cdn_state):
    path = "/web/Toys-1.png"
    url = f"{cdn}{path}"
    before = cdn_state.hits.get(path, 0)
    shown = httpx.get(f"{page}/", params={"image_url": url, "tenant": TENANT, "k": 4})
    assert shown.status_code == 200 and cdn_state.hits[path] == before + 1
    assert 'class="query-picture" src="data:image/jpeg;base64,' in shown.text
    assert shown.text.count('class="comparable-picture"') == 4
    answer = httpx.get(
        f"{page}/api/comparables", params={"image_url": url, "tenant": TENANT, "k": 4}
    )
    command = comparables(image=url, tenant=TENANT, k=4, resources=lake)
    assert answer.json() == answer_json(command) and command.query == f"image {url}"


def test_the_local_lake_serves_only_its_pictures(tmp_path):
    root = tmp_path / "lake"
    picture = root / IMAGE_PREFIX / "shop" / "SG-1" / f"{'a' * 64}.png"
    picture.parent.mkdir(parents=True)
    picture.write_bytes(servers.png())
    (root / "staging").mkdir()
    (root / "staging" / "secret.png").write_bytes(b"not for the page")
    (tmp_path / "outside.png").write_bytes(b"outside the lake")
    (picture.parent / "link.png").symlink_to(tmp_path / "outside.png")
    answers = Answers(
        store=LakeDirectory(root),
        resources={},
        catalog=contextlib.nullcontext,
        why_no_vector=lambda product_id: None,
    )
    with serving(create_app(answers)) as url:
        served = httpx.get(f"{url}/pictures/{IMAGE_PREFIX}/shop/SG-1/{'a' * 64}.png")
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        assert served.content == picture.read_bytes()
        for path in [
            "staging/secret.png",
            f"{IMAGE_PREFIX}/shop/SG-1/link.png",
            f"{IMAGE_PREFIX}/../staging/secret.png",
            f"{IMAGE_PREFIX}/%2e%2e/staging/secret.png",
            f"{IMAGE_PREFIX}/shop/..%2f..%2fstaging/secret.png",
            "%2fetc/passwd",
            f"{IMAGE_PREFIX}/shop/SG-1/{'a' * 64}.png%00.txt",
            f"{IMAGE_PREFIX}/shop/SG-1/",
        ]:
            refused = httpx.get(f"{url}/pictures/{path}")
            assert refused.status_code == 404 and b"outside" not in refused.content, path
        # No index yet: a message on the page, not a traceback.
        empty = httpx.get(f"{url}/", params={"product_id": "SG-1"})
        assert empty.status_code == 400 and "Traceback" not in empty.text
        assert 'class="error"' in empty.text


def test_a_person_asks_by_id_and_by_picture_in_a_browser(lake, page, tmp_path):
    asked = f"WB-{DAY}-7"
    upload = tmp_path / "asked.jpg"
    Image.open(io.BytesIO(servers.png((200, 40, 40), (300, 200)))).convert("RGB").save(upload)
    with browser_page() as browser:
        browser.goto(page)
        browser.fill("input[name=product_id]", asked)
        browser.fill("input[name=k]", "6")
        browser.click("button[type=submit]")
        browser.wait_for_selector("svg.chart")
        pictures = browser.locator("img.comparable-picture")
        assert pictures.count() == 6
        # Every picture really loaded, from S3 through its presigned URL.
        browser.wait_for_function(
            "() => [...document.querySelectorAll('img.comparable-picture')].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert browser.locator("svg.chart circle.comparable").count() == 6
        assert "Suggested price" in browser.inner_text(".suggested")
        browser.screenshot(path=str(tmp_path / "by-id.png"), full_page=True)

        browser.goto(page)
        browser.fill("input[name=tenant]", TENANT)
        browser.set_input_files("input[name=picture]", str(upload))
        browser.click("button[type=submit]")
        browser.wait_for_selector("img.query-picture")
        assert browser.locator("img.comparable-picture").count() == 10

        browser.goto(page)
        browser.fill("input[name=product_id]", "SG-NOPE-1")
        browser.click("button[type=submit]")
        assert "unknown product 'SG-NOPE-1'" in browser.inner_text(".error")
