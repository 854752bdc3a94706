"""Loopback servers for the benchmarks, each in its own process so that they do not share the
pipeline's interpreter lock: an image CDN and a Bedrock-compatible server with added latency, an
in-memory S3 object server, and moto for DynamoDB.

The pipeline's S3 copies go to the in-memory object server rather than moto: moto's server opens a
connection per request and spends about 4.5 ms of CPU on each PutObject, on the same two cores the
pipeline is measured on. Production S3 spends none of the pipeline's CPU; the boto3 client's own
cost per request, which production does pay, is the same against either.

Run as `python -m benchmarks.servers KIND [--latency S] [--images N]`; prints `PORT <n>` and serves
until its standard input closes.
"""

import argparse
import hashlib
import io
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from PIL import Image

from smartgo_analytics.local.demo_data import CATEGORIES, draw_product_image

LAST_MODIFIED = "Wed, 15 Jan 2025 00:00:00 GMT"


def distinct_images(count: int) -> list[bytes]:
    """`count` different product pictures: the demo's drawings, each stamped with its own number."""
    kinds = [(c, b) for c, (_, _, brands) in sorted(CATEGORIES.items()) for b in brands]
    images = []
    for n in range(count):
        category, brand = kinds[n % len(kinds)]
        picture = Image.open(io.BytesIO(draw_product_image(category, brand, n % 3)))
        for bit in range(16):
            if n >> bit & 1:
                picture.paste((n * 37 % 255, 40, 200), (bit * 16, 0, bit * 16 + 15, 6))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def cdn_handler(images: list[bytes], latency_s: float):
    etags = [f'"{hashlib.sha1(image).hexdigest()}"' for image in images]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes

        def log_message(self, *args):
            pass

        def do_GET(self):
            if latency_s:
                time.sleep(latency_s)
            try:
                n = int(self.path.rsplit("/", 1)[-1].split(".")[0])
                image, etag = images[n], etags[n]
            except (ValueError, IndexError):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(image)))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", LAST_MODIFIED)
            self.end_headers()
            self.wfile.write(image)

    return Handler


def s3_handler():
    """PutObject, GetObject (with Range), HeadObject, CreateBucket and multipart uploads, in memory."""
    objects: dict[str, bytes] = {}
    uploads: dict[str, dict[int, bytes]] = {}
    lock = threading.Lock()

    def etag(data: bytes) -> str:
        return f'"{hashlib.md5(data).hexdigest()}"'  # noqa: S324 - S3's ETag, not security

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def _target(self) -> tuple[str, dict]:
            parts = urlsplit(self.path)
            return unquote(parts.path), parse_qs(parts.query, keep_blank_values=True)

        def _reply(self, status: int, body: bytes = b"", headers: dict | None = None):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _xml(self, status: int, root: str, **fields):
            inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())
            body = f'<?xml version="1.0" encoding="UTF-8"?><{root}>{inner}</{root}>'.encode()
            self._reply(status, body, {"Content-Type": "application/xml"})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_PUT(self):
            path, query = self._target()
            data = self._body()
            if path.count("/") < 2:  # CreateBucket
                return self._reply(200)
            if "uploadId" in query:
                with lock:
                    uploads[query["uploadId"][0]][int(query["partNumber"][0])] = data
                return self._reply(200, headers={"ETag": etag(data)})
            with lock:
                objects[path] = data
            self._reply(200, headers={"ETag": etag(data)})

        def do_POST(self):
            path, query = self._target()
            self._body()
            if "uploads" in query:
                upload_id = uuid.uuid4().hex
                with lock:
                    uploads[upload_id] = {}
                return self._xml(200, "InitiateMultipartUploadResult", UploadId=upload_id)
            with lock:
                parts = uploads.pop(query["uploadId"][0])
                objects[path] = data = b"".join(parts[n] for n in sorted(parts))
            self._xml(200, "CompleteMultipartUploadResult", Key=path, ETag=etag(data))

        def do_GET(self):
            path, _ = self._target()
            data = objects.get(path)
            if data is None:
                if self.command == "HEAD":
                    return self._reply(404)
                return self._xml(404, "Error", Code="NoSuchKey", Message="no such key")
            headers = {"ETag": etag(data), "Last-Modified": LAST_MODIFIED,
                       "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}  # fmt: skip
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes="):
                first, _, last = wanted[6:].partition("-")
                end = min(int(last) if last else len(data) - 1, len(data) - 1)
                headers["Content-Range"] = f"bytes {first}-{end}/{len(data)}"
                return self._reply(206, data[int(first) : end + 1], headers)
            self._reply(200, data, headers)

        do_HEAD = do_GET

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["cdn", "bedrock", "s3", "moto"])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    if args.kind == "moto":
        from smartgo_analytics.local.stack import start_moto

        server = start_moto()
        port = server.server_port
    else:
        from smartgo_analytics_tests import servers

        if args.kind == "cdn":
            server = servers.start(cdn_handler(distinct_images(args.images), args.latency))
        elif args.kind == "s3":
            server = servers.start(s3_handler())
        else:
            state = servers.BedrockState()
            state.latency_s = args.latency
            state.cheap_vectors = True  # the server's own CPU is not what is being measured
            server = servers.bedrock_server(state)
        port = server.server_port
    print(f"PORT {port}", flush=True)
    sys.stdin.read()  # serve until the parent closes our standard input


@dataclass(frozen=True)
class Loopback:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User and system CPU the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def loopback(kind: str, **options):
    """Start a server process; yield its base URL and process id; stop it."""
    command = [sys.executable, "-m", "benchmarks.servers", kind]
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{kind} server did not start")
        yield Loopback(f"http://127.0.0.1:{int(line.split()[1])}", proc.pid)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    threading.current_thread().name = "benchmark-server"
    main()
