"""The comparables page: a day materialised against the loopback servers (pictures on moto's S3,
shown through presigned URLs), the app served by uvicorn on 127.0.0.1, asked over HTTP and in a
real browser (Debian's Chromium through Playwright); the local lake's picture route and its
refusals on a lake directory of its own."""

import contextlib
import io
import socket
import threading
import time

import boto3
import httpx
import pytest
import uvicorn
from dagster import materialize
from PIL import Image

from smartgo_analytics.comparables import Source, comparables
from smartgo_analytics.lake_directory import LakeDirectory
from smartgo_analytics.layout import IMAGE_PREFIX
from smartgo_analytics.resources.object_store import S3ObjectStore
from smartgo_analytics.web.answers import URL_REFUSED, Answers
from smartgo_analytics.web.app import answer_json, create_app
from smartgo_analytics.web.guard import Guard
from smartgo_analytics_tests import servers
from smartgo_analytics_tests.browser import browser_page
from smartgo_analytics_tests.pipeline import insert_products, resources
from smartgo_analytics_tests.test_similarity import ASSETS, RUN_CONFIG, day_sales, pictures

DAY, TENANT, OTHER = "2025-08-20", "web-shop", "other-shop"
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
    insert_products(stack.postgres_uri, day_sales(OTHER, DAY, urls, 4, "WO"))
    res = resources(stack, bucket, bedrock, cdn, tmp_path_factory.mktemp("web"))
    assert materialize(ASSETS, resources=res, partition_key=DAY, run_config=RUN_CONFIG).success
    return res


@pytest.fixture(scope="module")
def page(stack, lake, cdn):
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
        picture_hosts=(cdn.removeprefix("http://"),),  # the test CDN, on loopback
    )
    with serving(create_app(answers)) as url:
        yield url


def test_the_api_answers_as_the_command_and_refuses_what_it_cannot_answer(lake, page):
    asked = f"WB-{DAY}-4"
    answer = httpx.get(f"{page}/api/comparables", params={"product_id": asked, "k": 5}).json()
    assert answer == answer_json(comparables(product_id=asked, k=5, source=Source(resources=lake)))
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
        ({"product_id": asked, "tenant": "no-such-shop"}, 400, "no sold items"),
    ]:
        refused = httpx.get(f"{page}/api/comparables", params=params)
        assert (refused.status_code, message in refused.json()["error"]) == (status, True), (
            refused.text
        )
    for url, message in [
        ("file:///etc/passwd", "must start with http"),
        ("http://169.254.169.254/latest/meta-data/", "no usable picture at that URL"),
    ]:
        refused = httpx.post(
            f"{page}/api/comparables", files={"image_url": (None, url), "tenant": (None, TENANT)}
        )
        assert refused.status_code == 400 and message in refused.json()["error"], refused.text

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
    form = {"image_url": (None, url), "tenant": (None, TENANT), "k": (None, "4")}
    shown = httpx.post(f"{page}/", files=form, headers={"Origin": page})
    assert shown.status_code == 200 and cdn_state.hits[path] == before + 1
    assert 'class="query-picture" src="data:image/jpeg;base64,' in shown.text
    assert shown.text.count('class="comparable-picture"') == 4
    answer = httpx.post(f"{page}/api/comparables", files=form)
    command = comparables(image=url, tenant=TENANT, k=4, source=Source(resources=lake))
    assert answer.json() == answer_json(command) and command.query == f"image {url}"
    # A link or an <img> on another site only fills the form in: nothing is fetched by a GET.
    filled = httpx.get(f"{page}/", params={"image_url": url, "tenant": TENANT})
    assert (
        filled.status_code == 200 and cdn_state.hits[path] == before + 3
    )  # the command fetched too
    assert 'class="query-picture"' not in filled.text and f'value="{url}"' in filled.text
    assert httpx.get(f"{page}/api/comparables", params={"image_url": url}).status_code == 405
    assert cdn_state.hits[path] == before + 3


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
        browser.click("form:not(.categories) button[type=submit]")
        browser.wait_for_selector("svg.chart")
        # Asked by id: its own category only, and the answer says how strong it is.
        (category,) = browser.locator("form.categories button").all_inner_texts()
        assert browser.locator(".strength").inner_text().startswith(("strong", "weak: "))
        own = browser.locator("img.comparable-picture").count()
        assert 0 < own <= 6 and category.endswith(f"({own})")
        # Widened on purpose, with the box.
        browser.check("input[name=any_category]")
        browser.click("form:not(.categories) button[type=submit]")
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
        browser.click("form:not(.categories) button[type=submit]")
        browser.wait_for_selector("img.query-picture")
        assert browser.locator("img.comparable-picture").count() == 10

        browser.goto(page)
        browser.fill("input[name=product_id]", "SG-NOPE-1")
        browser.click("form:not(.categories) button[type=submit]")
        assert "unknown product 'SG-NOPE-1'" in browser.inner_text(".error")


ROUTES = ["/", "/?product_id=WB-2025-08-20-4", "/api/comparables?product_id=WB-2025-08-20-4",
          "/api/sales/WB-2025-08-20-4", "/pictures/images/x.png"]  # fmt: skip


def test_only_the_hosts_it_was_started_for_are_answered(page):
    port = page.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", "10.0.0.7"):
        for route in ROUTES:
            refused = httpx.get(f"{page}{route}", headers={"Host": host})
            assert refused.status_code == 421, (host, route, refused.status_code)
            assert (
                "WB-" not in refused.text and refused.headers["x-content-type-options"] == "nosniff"
            )
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
        assert httpx.get(f"{page}/", headers={"Host": host}).status_code == 200, host


def test_what_costs_or_reaches_out_is_a_post_from_the_page_itself(page, bedrock_calls):
    picture = {
        "picture": ("p.png", servers.png((10, 200, 30)), "image/png"),
        "tenant": (None, TENANT),
    }
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": page, "Sec-Fetch-Site": "cross-site"},  # the browser's word is taken
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://shop.127.0.0.1.nip.io"},
    ):
        for route in ("/", "/api/comparables"):
            refused = httpx.post(f"{page}{route}", files=picture, headers=headers)
            assert refused.status_code == 403, (headers, route, refused.text)
    assert bedrock_calls.calls == 0
    own = httpx.post(
        f"{page}/", files=picture, headers={"Origin": page, "Sec-Fetch-Site": "same-origin"}
    )
    assert own.status_code == 200 and bedrock_calls.calls == 1


def test_twenty_people_at_once_on_every_route_get_answers(page):
    def ask(route: str) -> int:
        return httpx.get(f"{page}{route}", timeout=60).status_code

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(20) as people:
        for route in ROUTES:
            statuses = list(people.map(ask, [route] * 20))
            assert statuses == [404 if route.startswith("/pictures/") else 200] * 20, route


def test_uploads_are_parsed_with_limits_and_a_slow_body_is_cut_off(lake, cdn):
    answers = Answers(
        resources=lake, catalog=lambda: contextlib.nullcontext(lake["iceberg"].catalog())
    )
    with serving(create_app(answers, Guard(body_seconds=1.0))) as url:
        boundary = "b"
        parts = "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'
            for _ in range(100_000)
        )
        body = (parts + f"--{boundary}--\r\n").encode()
        many = httpx.post(
            f"{url}/api/comparables",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert many.status_code == 400 and "Too many fields" in many.json()["error"]
        # Headers, then a trickle: the body must be in within the second it is given.
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as slow:
            slow.sendall(
                b"POST /api/comparables HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                b"Content-Length: 5000\r\n\r\n" + b"x" * 100
            )
            slow.settimeout(10)
            answer = slow.recv(4096).decode("latin-1")
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert "took more than 1 s" in answer


def test_a_url_ask_reaches_only_picture_hosts_and_every_refusal_reads_the_same(page, cdn):
    port = page.rsplit(":", 1)[1]
    answers = set()
    for url in (
        f"http://127.0.0.1:{port}/",  # the page itself
        f"http://localhost:{servers.free_port()}/x.png",  # a closed port
        f"{cdn.replace('localhost', '127.0.0.1')}/web/Toys-1.png",  # the CDN by another name
        "http://10.1.2.3/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:22/",
        f"{cdn}/page.png",  # an allowed host whose answer is not a picture
    ):
        refused = httpx.post(
            f"{page}/api/comparables", files={"image_url": (None, url), "tenant": (None, TENANT)}
        )
        assert refused.status_code == 400, (url, refused.text)
        answers.add(refused.json()["error"])
    assert answers == {URL_REFUSED}


def test_answers_carry_a_policy_the_page_keeps_and_say_nothing_of_the_server(page):
    shown = httpx.get(f"{page}/", params={"product_id": f"WB-{DAY}-4"})
    policy = shown.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'<style nonce="{nonce}">' in shown.text and "<script" not in shown.text
    assert "<bdi>Sony</bdi>" in shown.text or "<bdi>" in shown.text.split('class="price"')[1]
    for route in ROUTES:
        answer = httpx.get(f"{page}{route}")
        assert answer.headers["x-content-type-options"] == "nosniff", route
        if route.startswith("/api/"):
            assert answer.headers["cache-control"] == "no-store", route
        assert "/tmp/" not in answer.text and "file://" not in answer.text, route
        assert httpx.head(f"{page}{route}").status_code == answer.status_code, route
    other = httpx.get(
        f"{page}/api/comparables", params={"product_id": f"WO-{DAY}-1", "tenant": TENANT}
    )
    assert other.status_code == 400 and "another tenant's sale" in other.json()["error"]


def test_beyond_loopback_a_token_is_asked_on_every_request_and_questions_are_rate_limited(lake):
    answers = Answers(
        store=lake["object_store"],
        resources=lake,
        catalog=lambda: contextlib.nullcontext(lake["iceberg"].catalog()),
    )
    with serving(create_app(answers, Guard(token="t0ken", asks_per_minute=2))) as url:
        assert httpx.get(f"{url}/").status_code == 401
        assert httpx.get(f"{url}/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        opened = httpx.get(f"{url}/", params={"token": "t0ken"})
        assert opened.status_code == 200 and "HttpOnly" in opened.headers["set-cookie"]
        assert "Secure" not in opened.headers["set-cookie"]  # plain HTTP: a Secure cookie is lost
        proxied = httpx.get(
            f"{url}/", params={"token": "t0ken"}, headers={"X-Forwarded-Proto": "https"}
        )
        assert proxied.headers["set-cookie"].endswith("; Secure")
        wrong = httpx.get(f"{url}/", params={"token": "t0ke"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        cookie = {"smartgo_page_token": "t0ken"}
        assert httpx.get(f"{url}/", cookies=cookie).status_code == 200
        bearer = {"Authorization": "Bearer t0ken"}
        form = {"product_id": (None, f"WB-{DAY}-4")}
        asked = [
            httpx.post(f"{url}/api/comparables", files=form, headers=bearer).status_code
            for _ in range(3)
        ]
        assert asked == [200, 200, 429]
