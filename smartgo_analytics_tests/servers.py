"""Loopback servers the tests talk to: a Bedrock-runtime look-alike and a hostile image CDN."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from smartgo_analytics.core.imaging import visual_features


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once; the default backlog of 5 drops SYNs

    def handle_error(self, request, client_address):
        pass


def start(handler_class) -> _Server:
    server = _Server(("127.0.0.1", 0), handler_class)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class RequestQuota:
    """An on-demand quota as Bedrock enforces it per account and model, modelled as a bucket:
    `per_minute` requests a minute (or, with `tokens=True`, `per_minute` tokens a minute, each
    request costing what the model charges it), at most one second's worth (and at least 2
    requests' worth) at once; a request beyond it is refused (429 ThrottlingException)."""

    def __init__(self, per_minute: float, clock=time.monotonic, tokens: bool = False):
        self.per_minute = per_minute
        self.tokens = tokens
        self.rate = per_minute / 60
        self.capacity = max(2.0, self.rate)
        self._clock = clock
        self._left, self._at = self.capacity, clock()
        self._lock = threading.Lock()
        self.admitted: list[float] = []  # when each admitted request arrived
        self.charged: list[int] = []  # what each admitted request cost, in tokens mode
        self.refused = 0

    def admit(self, charge: int = 1) -> bool:
        cost = charge if self.tokens else 1
        with self._lock:
            now = self._clock()
            self._left = min(
                max(self.capacity, 2 * cost), self._left + (now - self._at) * self.rate
            )
            self._at = now
            if self._left >= cost:
                self._left -= cost
                self.admitted.append(now)
                self.charged.append(cost)
                return True
            self.refused += 1
            return False

    def admitted_per_minute(self) -> float:
        """The rate at which requests were admitted, from the first to the last."""
        times = self.admitted
        return (len(times) - 1) * 60 / (times[-1] - times[0]) if len(times) > 1 else 0.0


class FaultWindow:
    """A fault a server answers with for a while: `kind` "503", "500" or "reset" (the connection
    closed with a TCP reset), for every request or a `share` of them, for `seconds` from now, or
    from the request after the next `after` ones (an outage in the middle of a day)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.kind: str | None = None
        self.until = 0.0
        self.seconds = 0.0
        self.after = 0
        self.share = 1.0
        self.faulted = 0
        self.rng = random.Random(7)

    def open(self, kind: str, seconds: float, share: float = 1.0, after: int = 0) -> None:
        with self.lock:
            self.kind, self.seconds, self.share, self.faulted, self.after = (
                kind,
                seconds,
                share,
                0,
                after,
            )
            self.until = time.monotonic() + seconds if after == 0 else float("inf")

    def close(self) -> None:
        with self.lock:
            self.kind, self.until = None, 0.0

    def hit(self) -> str | None:
        """The fault this request meets, if any."""
        with self.lock:
            if self.kind is not None and self.after > 0:
                self.after -= 1
                if self.after == 0:
                    self.until = time.monotonic() + self.seconds
                return None
            if (
                self.kind is None
                or time.monotonic() >= self.until
                or self.rng.random() >= self.share
            ):
                return None
            self.faulted += 1
            return self.kind


def reset_connection(handler: BaseHTTPRequestHandler) -> None:
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True


class BedrockState:
    def __init__(self):
        self.fault = FaultWindow()
        self.quota: RequestQuota | None = None
        self.lock = threading.Lock()
        self.calls = 0
        self.throttle_next = 0
        self.wrong_length_for: set[str] = set()  # sha256 of images answered with 7 values
        self.hostile: dict[str, str] = {}  # sha256 of an image -> one of HOSTILE_ANSWERS
        self.model_timeouts_next = 0
        self.requests: list[str] = []
        self.latency_s = 0.0
        self.cheap_vectors = False  # a seeded random vector instead of visual features (benchmarks)
        self.broken: str | None = None  # "constant" or "random": a model that has stopped seeing
        self.in_flight = 0
        self.most_in_flight = 0
        self.models: Counter[str] = Counter()  # calls answered, by model id

    def reset(self):
        self.fault.close()
        with self.lock:
            self.calls = 0
            self.throttle_next = 0
            self.model_timeouts_next = 0
            self.wrong_length_for = set()
            self.hostile = {}
            self.requests = []
            self.most_in_flight = 0
            self.latency_s = 0.0
            self.quota = None
            self.broken = None
            self.models = Counter()


TITAN = "amazon.titan-embed-image-v1"
NOVA = "amazon.nova-2-multimodal-embeddings-v1:0"
NOVA_FORMATS = {"png": b"\x89PNG", "jpeg": b"\xff\xd8", "gif": b"GIF8", "webp": b"RIFF"}


def model_input(model: str, request: dict) -> tuple[bytes, int]:
    """The picture and the vector length an InvokeModel body asks of `model`, read as Bedrock reads
    each model's schema (the double was written from their user guides, not from this project's
    code); ValueError, Bedrock's ValidationException, for a body the model would refuse."""
    if model == TITAN:
        dimension = request.get("embeddingConfig", {}).get("outputEmbeddingLength", 1024)
        if dimension not in (256, 384, 1024) or "inputImage" not in request:
            raise ValueError("Malformed input request, please reformat your input and try again.")
        return base64.b64decode(request["inputImage"], validate=True), dimension
    if model == NOVA:
        params = request.get("singleEmbeddingParams") or {}
        image = params.get("image") or {}
        source = image.get("source") or {}
        if (
            request.get("schemaVersion") != "nova-multimodal-embed-v1"
            or request.get("taskType") != "SINGLE_EMBEDDING"
            or params.get("embeddingPurpose") not in ("GENERIC_INDEX", "GENERIC_RETRIEVAL")
            or params.get("embeddingDimension") not in (256, 384, 1024, 3072)
            or image.get("format") not in NOVA_FORMATS
            or "bytes" not in source
        ):
            raise ValueError("Malformed input request: schema nova-multimodal-embed-v1 violated")
        data = base64.b64decode(source["bytes"], validate=True)
        if not data.startswith(NOVA_FORMATS[image["format"]]):
            raise ValueError(f"The image is not of format {image['format']}")
        return data, params["embeddingDimension"]
    raise ValueError("The provided model identifier is invalid.")


def model_vector(model: str, image: bytes, dimension: int) -> np.ndarray:
    """What each model makes of a picture: Titan the visual features; Nova the same features in
    another basis (its own coordinates, the same neighbours), so that two models' vectors of one
    picture differ while their nearest neighbours agree."""
    vector = visual_features(image, dimension)
    if model == NOVA:
        rng = np.random.default_rng(dimension)
        vector = (vector * rng.choice([-1.0, 1.0], dimension))[rng.permutation(dimension)]
    return vector.astype(np.float32)


def model_answer(model: str, vector: list[float]) -> bytes:
    if model == NOVA:
        return json.dumps(
            {"embeddings": [{"embeddingType": "IMAGE", "embedding": vector}]}
        ).encode()
    return json.dumps({"embedding": vector, "inputTextTokenCount": 0}).encode()


@functools.cache
def hostile_answer(kind: str, dimension: int) -> bytes:
    """A 200 answer no vector should be taken from."""
    vector = [0.5] * dimension
    if kind == "not-json":
        return b"<html>upstream error</html>"
    if kind == "no-field":
        return json.dumps({"embeddings": vector}).encode()
    if kind == "not-a-list":
        return json.dumps({"embedding": "0.5,0.5"}).encode()
    if kind == "short":
        return json.dumps({"embedding": vector[:-1]}).encode()
    if kind == "strings":
        return json.dumps({"embedding": ["0.5"] * dimension}).encode()
    if kind == "booleans":
        return json.dumps({"embedding": [True] * dimension}).encode()
    if kind == "nan":
        return ('{"embedding": [NaN' + ", 0.5" * (dimension - 1) + "]}").encode()
    if kind == "infinity":
        return ('{"embedding": [Infinity' + ", 0.5" * (dimension - 1) + "]}").encode()
    if kind == "beyond-float32":
        return json.dumps({"embedding": [1e39] + vector[1:]}).encode()
    if kind == "zeros":
        return json.dumps({"embedding": [0.0] * dimension}).encode()
    if kind == "array":
        return json.dumps([vector]).encode()
    if kind == "deep":  # nested past any parser's recursion limit
        return b'{"embedding": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    if kind == "huge-body":  # a usable vector, padded to 2 MB
        return json.dumps({"embedding": vector, "padding": "x" * 2 * 2**20}).encode()
    if kind == "huge-integers":  # whole numbers too large for a float
        return ('{"embedding": [' + ", ".join(["1" + "0" * 400] * dimension) + "]}").encode()
    raise ValueError(kind)


HOSTILE_ANSWERS = (
    "not-json",
    "no-field",
    "not-a-list",
    "short",
    "strings",
    "booleans",
    "nan",
    "infinity",
    "beyond-float32",
    "zeros",
    "array",
    "hang",
    "reset",
    "deep",
    "huge-integers",
    "cut-short",
    "huge-body",
)


def image_tokens(image: bytes) -> int:
    """What this server charges an image, in tokens: more for a bigger one (Titan's own count is
    the model's; only the answer's header tells it)."""
    return 40 + len(image) // 64


def cheap_body(seed: int, dimension: int) -> bytes:
    """One of 256 ready-made answers: the benchmarks measure the pipeline, not this server."""
    vector = np.random.default_rng(seed).standard_normal(dimension).round(6).tolist()
    return json.dumps({"embedding": vector, "inputTextTokenCount": 0}).encode()


def broken_body(kind: str, digest: bytes, dimension: int) -> bytes:
    """What a broken model answers: one vector for every image, or noise."""
    if kind == "constant":
        vector = [0.25] * dimension
    else:
        vector = np.random.default_rng(list(digest)).standard_normal(dimension).round(6).tolist()
    return json.dumps({"embedding": vector, "inputTextTokenCount": 0}).encode()


def bedrock_server(state: BedrockState) -> _Server:
    """POST /model/<id>/invoke as Bedrock runtime answers it for Titan image embeddings."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = (
            "HTTP/1.1"  # keep-alive, as Bedrock's endpoint does; every reply has a length
        )
        disable_nagle_algorithm = True  # headers and body go out as two writes

        def log_message(self, *args):
            pass

        def _error(self, status: int, code: str, message: str):
            body = json.dumps({"message": message}).encode()
            self.send_response(status)
            self.send_header(
                "x-amzn-ErrorType", f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/"
            )
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            request = json.loads(self.rfile.read(length))
            route = re.fullmatch(r"/model/([^/]+)/invoke", self.path)
            if not route:
                return self._error(404, "ResourceNotFoundException", "no such route")
            model = urllib.parse.unquote(route.group(1))
            try:
                image, dimension = model_input(model, request)
            except ValueError as error:
                return self._error(400, "ValidationException", str(error))
            fault = state.fault.hit()
            if fault == "reset":
                return reset_connection(self)
            if fault:
                return self._error(
                    int(fault),
                    "ServiceUnavailableException" if fault == "503" else "InternalServerException",
                    "try again later",
                )
            charge = image_tokens(image)
            if state.quota is not None and not state.quota.admit(charge):
                return self._error(429, "ThrottlingException", "Too many requests, please wait")
            with state.lock:
                state.calls += 1
                state.requests.append(hashlib.sha256(image).hexdigest()[:8])
                state.models[model] += 1
                if state.throttle_next > 0:
                    state.throttle_next -= 1
                    throttled = True
                else:
                    throttled = False
                timeout = state.model_timeouts_next > 0
                if timeout:
                    state.model_timeouts_next -= 1
                state.in_flight += 1
                state.most_in_flight = max(state.most_in_flight, state.in_flight)
            if state.latency_s:
                time.sleep(state.latency_s)
            with state.lock:
                state.in_flight -= 1
            if throttled:
                return self._error(429, "ThrottlingException", "Too many requests, please wait")
            if timeout:
                return self._error(408, "ModelTimeoutException", "Model timed out")
            digest = hashlib.sha256(image)
            hostile = state.hostile.get(digest.hexdigest())
            if hostile == "hang":  # accept, read, never answer
                time.sleep(5)
                self.close_connection = True
                return None
            if hostile == "reset":
                return reset_connection(self)
            if hostile == "cut-short":  # a body shorter than its Content-Length, then closed
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "9000")
                self.end_headers()
                self.wfile.write(b'{"embedding": [0.5, 0.5')
                self.close_connection = True
                return None
            if hostile:
                body = hostile_answer(hostile, dimension)
            elif state.cheap_vectors:
                body = cheap_body(digest.digest()[0], dimension)
            elif state.broken:
                body = broken_body(state.broken, digest.digest(), dimension)
            else:
                vector = model_vector(model, image, dimension).tolist()
                if digest.hexdigest() in state.wrong_length_for:
                    vector = vector[:7]
                body = model_answer(model, vector)
            self.send_response(200)
            self.send_header("X-Amzn-Bedrock-Input-Token-Count", str(charge))
            self.send_header("X-Amzn-Bedrock-Output-Token-Count", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return start(Handler)


def png(color=(200, 30, 30), size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png() -> bytes:
    """A small PNG that claims 30000 x 30000 pixels."""
    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class CdnState:
    def __init__(self):
        self.fault = FaultWindow()
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.images: dict[str, bytes] = {}  # served with an ETag, and 304 when it still matches
        self.not_modified = 0


@functools.cache
def gzip_bomb(inflated_mb: int = 256) -> bytes:
    """A gzip body of a few hundred kilobytes that inflates to `inflated_mb` MB of zeros."""
    import zlib

    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * 2**20
    return b"".join(deflate.compress(zeros) for _ in range(inflated_mb)) + deflate.flush()


def hostile_cdn(state: CdnState, slow_s: float = 3.0) -> _Server:
    import gzip

    bomb = bomb_png()
    good = png()
    corrupt = good[: len(good) // 2]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes, content_type="image/png", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, location: str):
            self._send(302, b"", "text/plain", [("Location", location)])

        def do_GET(self):
            path = self.path.split("?")[0]
            fault = state.fault.hit()
            if fault == "reset":
                return reset_connection(self)
            if fault:
                return self._send(int(fault), b"try again later", "text/plain")
            with state.lock:
                state.hits[path] = state.hits.get(path, 0) + 1
                hits = state.hits[path]
            if path in state.images:
                etag = f'"{hashlib.sha1(state.images[path]).hexdigest()}"'
                if self.headers.get("If-None-Match") == etag:
                    with state.lock:
                        state.not_modified += 1
                    return self._send(304, b"", headers=[("ETag", etag)])
                return self._send(200, state.images[path], headers=[("ETag", etag)])
            if path == "/ok.png":
                return self._send(200, good)
            if path == "/gzipped.png":
                return self._send(200, gzip.compress(good), headers=[("Content-Encoding", "gzip")])
            if path == "/gzip-bomb.png":
                return self._send(200, gzip_bomb(), headers=[("Content-Encoding", "gzip")])
            if path == "/brotli.png":
                return self._send(200, good, headers=[("Content-Encoding", "br")])
            if path == "/missing.png":
                return self._send(404, b"not found", "text/plain")
            if path == "/flaky.png":
                return (
                    self._send(500, b"oops", "text/plain") if hits == 1 else self._send(200, good)
                )
            if path == "/always-500.png":
                return self._send(503, b"down", "text/plain")
            if path == "/slow.png":
                time.sleep(slow_s)
                return self._send(200, good)
            if path == "/huge.png":
                return self._send(200, b"\x89PNG" + b"\0" * (11 * 1024 * 1024))
            if path == "/endless.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b"\0" * 65536
                try:
                    for _ in range(400):  # bounded: 26 MB at most, well past the cap
                        self.wfile.write(chunk)
                except OSError:
                    pass
                self.close_connection = True
                return None
            if path == "/page.png":
                return self._send(200, b"<html><body>hello</body></html>", "text/html")
            if path == "/corrupt.png":
                return self._send(200, corrupt)
            if path == "/bomb.png":
                return self._send(200, bomb)
            if path == "/to-loopback.png":
                return self._redirect(f"http://127.0.0.1:{self.server.server_port}/ok.png")
            if path == "/to-metadata.png":
                return self._redirect("http://169.254.169.254/latest/meta-data/")
            if path == "/to-private.png":
                return self._redirect("http://10.0.0.1/image.png")
            if path == "/to-ok.png":
                return self._redirect("/ok.png")
            if path == "/loop.png":
                return self._redirect("/loop.png")
            return self._send(404, b"not found", "text/plain")

    return start(Handler)


class WebhookReceiver:
    """A Slack-incoming-webhook look-alike that keeps what it was sent."""

    def __init__(self, status: int = 200):
        self.messages: list[dict] = []
        self.status = status  # what it answers: 500 makes it a destination that fails
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.messages.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = start(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/secret-token"

    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages]


# The daily job's assets, as a person selects them in the UI ("Materialize all").
DAILY_ASSETS = [
    ["smartgo_sales"],
    ["product_image_embeddings"],
    ["smartgo_sales_iceberg"],
    ["dynamodb_daily_metrics"],
    *(
        ["quicksight", d]
        for d in ("store_summaries", "top_products", "anomalies", "trends", "recommendations")
    ),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def graphql(url: str, query: str, **variables) -> dict:
    """A query to a Dagster webserver's GraphQL API; its data, or AssertionError with the errors."""
    import httpx

    response = httpx.post(
        f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60
    )
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


@contextlib.contextmanager
def dagster_dev(home, args: list[str], **env: str):
    """`smartgo-analytics dev` on a free port with SMARTGO_HOME=home (and alerts linking to it), until
    it answers; its URL for the block, then Ctrl-C for it and its stack."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SMARTGO_", "DAGSTER_HOME"))
    }
    environment.update(SMARTGO_HOME=str(home), DAGSTER_WEBSERVER_URL=url, **env)
    home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "smartgo_analytics.cli", "dev", *args, "--port", str(port)]
    with _serving(command, environment, home / "dev.log", url, cwd=None):
        yield url


@contextlib.contextmanager
def dagster_dev_command(dagster_home, env: dict[str, str]):
    """Plain `dagster dev` of the project's definitions, as a deployment runs it (webserver and
    daemon; instance in `dagster_home`; settings from `env` alone), on a free port until it
    answers; its URL for the block, then Ctrl-C."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SMARTGO_", "DAGSTER_", "AWS_"))
    }
    environment.update(env, DAGSTER_HOME=str(dagster_home), DAGSTER_WEBSERVER_URL=url)
    from smartgo_analytics.cli.stack import dagster_dev_command as command_of

    with _serving(command_of(port), environment, dagster_home / "dev.log", url, cwd=dagster_home):
        yield url


@contextlib.contextmanager
def _serving(command: list[str], environment: dict, log_path, url: str, cwd):
    import httpx

    log = log_path.open("w")
    # Its own process group: Ctrl-C reaches the webserver and the daemon too, as from a terminal
    # (to `dagster dev` alone, they outlive it and keep the cores busy).
    proc = subprocess.Popen(
        command,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("dagster dev did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        deadline = time.monotonic() + 15
        with contextlib.suppress(ProcessLookupError):
            while time.monotonic() < deadline:
                os.killpg(proc.pid, 0)  # raises once every process of the group has gone
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is still there
        log.close()


class FaultyAwsProxy:
    """127.0.0.1:<port> forwarding every request to an AWS-compatible server (moto), except while
    its `fault` window is open: then it answers as the services do when they cannot now, S3 with
    503 SlowDown (XML), a JSON-protocol service (DynamoDB) with 503 ServiceUnavailable."""

    def __init__(self, target_url: str):
        import http.client
        from urllib.parse import urlsplit

        self.fault = FaultWindow()
        target = urlsplit(target_url)
        fault = self.fault

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if fault.hit():
                    if self.headers.get("X-Amz-Target"):
                        answer = b'{"__type":"com.amazonaws.dynamodb.v20120810#ServiceUnavailableException","message":"try again"}'
                        return self._reply(
                            503, [("Content-Type", "application/x-amz-json-1.0")], answer
                        )
                    answer = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    return self._reply(503, [("Content-Type", "application/xml")], answer)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    hop = {"connection", "keep-alive", "transfer-encoding"}
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    answer = response.read()
                    kept = [
                        (k, v)
                        for k, v in response.getheaders()
                        if k.lower() not in hop | {"content-length"}
                    ]
                finally:
                    upstream.close()
                return self._reply(response.status, kept, answer)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = start(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


class TcpProxy:
    """127.0.0.1:<port> forwarding to a server, that can be cut like a server restarting: every
    connection reset and new ones refused (closed at once) for a while. `cut_after(n, seconds)`
    cuts once the server has sent n more bytes through it (in the middle of an answer)."""

    def __init__(self, target: tuple[str, int] | str):
        self.target = target  # (host, port), or the path of a Unix socket
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.down_until = 0.0
        self.cut_at: int | None = None
        self.cut_for = 0.0
        self.sent = 0
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, more_bytes: int, seconds: float) -> None:
        with self.lock:
            self.cut_at, self.cut_for = self.sent + more_bytes, seconds

    def _cut(self) -> None:
        with self.lock:
            self.down_until, self.cut_at = time.monotonic() + self.cut_for, None
            self.cuts += 1
            sockets, self.open = self.open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads pumping it

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                client.close()
                continue
            try:
                if isinstance(self.target, str):
                    upstream = socket.socket(socket.AF_UNIX)
                    upstream.connect(self.target)
                else:
                    upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, upstream]
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_server:
                    with self.lock:
                        self.sent += len(data)
                        cut = self.cut_at is not None and self.sent >= self.cut_at
                    if cut:
                        self._cut()
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.listener.close()
        self._cut()


class BatchState:
    """Bedrock batch inference jobs as the control plane keeps them. A job reads its JSONL input
    from S3 (moto's), answers each record as InvokeModel would (`model_input`, `model_vector`,
    `model_answer`) and writes `<output>/<job id>/<input name>.out` and `manifest.json.out`.
    `failing_images`: sha256 of pictures whose records get an `error`; `job_failure`: the next
    job fails with this message, writing nothing (after `jobs_to_pass` more jobs have passed);
    `seconds`: how long a job runs."""

    def __init__(self, s3_endpoint: str):
        self.s3_endpoint = s3_endpoint
        self.lock = threading.Lock()
        self.jobs: dict[str, dict] = {}
        self.failing_images: set[str] = set()
        self.job_failure: str | None = None
        self.jobs_to_pass = 0
        self.seconds = 0.5
        self.records = 0  # every record answered, over all jobs

    def reset(self) -> None:
        with self.lock:
            self.failing_images, self.job_failure, self.seconds = set(), None, 0.5
            self.jobs_to_pass = 0

    def _s3(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def run(self, job: dict, failure: str | None) -> None:
        try:
            self._run(job, failure)
        except Exception as error:  # the double's own fault: the job fails, saying so
            job.update(status="Failed", message=f"double: {error!r}", endTime=time.time())

    def _run(self, job: dict, failure: str | None) -> None:
        time.sleep(self.seconds / 2)
        if job["status"] == "Stopped":
            return
        job["status"] = "InProgress"
        if failure:
            time.sleep(self.seconds / 2)
            job.update(status="Failed", message=failure, endTime=time.time())
            return
        source = job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
        bucket, key = source.removeprefix("s3://").split("/", 1)
        s3 = self._s3()
        lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()
        job["totalRecordCount"] = len(lines)
        job.update(processedRecordCount=0, errorRecordCount=0, successRecordCount=0)
        out, errors = [], 0
        for n, line in enumerate(lines, start=1):
            record = json.loads(line)
            answered = {"recordId": record["recordId"], "modelInput": record["modelInput"]}
            try:
                image, dimension = model_input(job["modelId"], record["modelInput"])
                if hashlib.sha256(image).hexdigest() in self.failing_images:
                    raise ValueError("The model could not process the image")
                vector = model_vector(job["modelId"], image, dimension).tolist()
                answered["modelOutput"] = json.loads(model_answer(job["modelId"], vector))
            except ValueError as error:
                answered["error"] = {"errorCode": 400, "errorMessage": str(error)}
                errors += 1
            out.append(json.dumps(answered))
            job.update(
                processedRecordCount=n, errorRecordCount=errors, successRecordCount=n - errors
            )
            if n == len(lines) // 2:
                time.sleep(self.seconds / 2)  # progress a poll can see
        with self.lock:
            self.records += len(lines)
        target = job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"].removeprefix("s3://")
        out_bucket, _, prefix = target.partition("/")
        folder = f"{prefix.rstrip('/')}/{job['jobArn'].rsplit('/', 1)[1]}/"
        name = key.rsplit("/", 1)[-1]
        s3.put_object(Bucket=out_bucket, Key=f"{folder}{name}.out", Body="\n".join(out).encode())
        summary = {
            k: job[k]
            for k in (
                "totalRecordCount",
                "processedRecordCount",
                "successRecordCount",
                "errorRecordCount",
            )
        }
        s3.put_object(
            Bucket=out_bucket, Key=f"{folder}manifest.json.out", Body=json.dumps(summary).encode()
        )
        job.update(status="PartiallyCompleted" if errors else "Completed", endTime=time.time())


def bedrock_control_server(state: BatchState):
    """The bedrock control plane's batch inference operations: CreateModelInvocationJob,
    GetModelInvocationJob, ListModelInvocationJobs, StopModelInvocationJob (REST JSON)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, status: int, body: dict, error: str | None = None):
            data = json.dumps(body).encode()
            self.send_response(status)
            if error:
                self.send_header("x-amzn-ErrorType", error)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _job(self, identifier: str) -> dict | None:
            job_id = urllib.parse.unquote(identifier).rsplit("/", 1)[-1]
            return state.jobs.get(job_id)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            request = json.loads(self.rfile.read(length) or b"{}")
            stop = re.fullmatch(r"/model-invocation-job/([^/]+)/stop", self.path)
            if stop:
                job = self._job(stop.group(1))
                if job is None:
                    return self._reply(404, {"message": "no such job"}, "ResourceNotFoundException")
                job.update(status="Stopped", endTime=time.time())
                return self._reply(200, {})
            if self.path != "/model-invocation-job":
                return self._reply(404, {"message": "no such route"}, "ResourceNotFoundException")
            needed = ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig")
            if any(not request.get(name) for name in needed) or not request["roleArn"].startswith(
                "arn:aws:iam::"
            ):
                return self._reply(400, {"message": "invalid job request"}, "ValidationException")
            with state.lock:
                job_id = f"{len(state.jobs) + 1:012x}"
                failure = None
                if state.jobs_to_pass:
                    state.jobs_to_pass -= 1
                else:
                    failure, state.job_failure = state.job_failure, None
                arn = f"arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/{job_id}"
                job = {
                    **{name: request[name] for name in needed},
                    "jobArn": arn,
                    "status": "Submitted",
                    "submitTime": time.time(),
                    "lastModifiedTime": time.time(),
                    "timeoutDurationInHours": request.get("timeoutDurationInHours", 24),
                }
                state.jobs[job_id] = job
            threading.Thread(target=state.run, args=(job, failure), daemon=True).start()
            return self._reply(200, {"jobArn": arn})

        def do_GET(self):
            route = re.fullmatch(r"/model-invocation-job/([^/?]+)", self.path)
            if route:
                job = self._job(route.group(1))
                if job is None:
                    return self._reply(404, {"message": "no such job"}, "ResourceNotFoundException")
                return self._reply(200, job)
            if self.path.split("?")[0] == "/model-invocation-jobs":
                summaries = [dict(job) for job in state.jobs.values()]
                return self._reply(200, {"invocationJobSummaries": summaries})
            return self._reply(404, {"message": "no such route"}, "ResourceNotFoundException")

    return start(Handler)
