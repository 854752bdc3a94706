"""Loopback servers for the benchmarks, each in its own process so that they do not share the
pipeline's interpreter lock: an image CDN and a Bedrock-compatible server with added latency and an
in-memory S3 object server, each speaking HTTP/1.1 on one event loop, and moto for DynamoDB. They
stand in for services whose CPU is not the pipeline's, so they are kept cheap: they run on the
same two cores the pipeline is measured on.

The pipeline's S3 copies go to the in-memory object server rather than moto: moto's server opens a
connection per request and spends about 4.5 ms of CPU on each PutObject, on the same two cores the
pipeline is measured on. Production S3 spends none of the pipeline's CPU; the boto3 client's own
cost per request, which production does pay, is the same against either.

Run as `python -m benchmarks.servers KIND [--latency S] [--images N]`; prints `PORT <n>` and serves
until its standard input closes.
"""

import argparse
import asyncio
import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from PIL import Image

from smartgo_analytics.local.demo_data import CATEGORIES
from smartgo_analytics.local.drawings import draw_product_image
from smartgo_analytics.local.photos import corpus_picture

LAST_MODIFIED = "Wed, 15 Jan 2025 00:00:00 GMT"


def distinct_images(count: int) -> list[bytes]:
    """`count` different product pictures: the demo's drawings, each stamped with its own number."""
    kinds = [(c, b) for c, (_, brands) in sorted(CATEGORIES.items()) for b in brands]
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


Reply = tuple[int, dict[str, str], bytes]


def cdn_app(images: list[bytes] | None):
    """GET /img/<n>.jpg with an ETag; If-None-Match answered with 304. Without `images`, picture n
    is the photo corpus's, stamped with n (made per request: the corpus is held once, not n times)."""
    etags = [f'"{hashlib.sha1(image).hexdigest()}"' for image in images or []]

    def app(method: str, target: str, headers: dict, body: bytes) -> Reply:
        try:
            n = int(target.rsplit("/", 1)[-1].split(".")[0])
            if images is None:
                image, etag = corpus_picture(n), f'"photo-{n}"'
            else:
                image, etag = images[n], etags[n]
        except (ValueError, IndexError):
            return 404, {}, b""
        if headers.get("if-none-match") == etag:
            return 304, {"ETag": etag}, b""
        return (
            200,
            {"Content-Type": "image/jpeg", "ETag": etag, "Last-Modified": LAST_MODIFIED},
            image,
        )

    return app


def s3_app():
    """PutObject (with If-Match / If-None-Match), GetObject (with Range), HeadObject, DeleteObject,
    ListObjectsV2 (one page), CreateBucket and multipart uploads, in memory."""
    objects: dict[str, bytes] = {}
    uploads: dict[str, dict[int, bytes]] = {}

    def etag(data: bytes) -> str:
        return f'"{hashlib.md5(data).hexdigest()}"'  # noqa: S324 - S3's ETag, not security

    def xml(status: int, root: str, **fields) -> Reply:
        inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())
        body = f'<?xml version="1.0" encoding="UTF-8"?><{root}>{inner}</{root}>'.encode()
        return status, {"Content-Type": "application/xml"}, body

    def app(method: str, target: str, headers: dict, body: bytes) -> Reply:
        parts = urlsplit(target)
        path, query = unquote(parts.path), parse_qs(parts.query, keep_blank_values=True)
        if method == "GET" and "list-type" in query:  # ListObjectsV2 of /<bucket>
            bucket = "/" + path.strip("/") + "/"
            wanted = bucket + query.get("prefix", [""])[0]
            keys = sorted(k for k in objects if k.startswith(wanted))
            contents = "".join(
                f"<Contents><Key>{escape(k[len(bucket) :])}</Key><ETag>{escape(etag(objects[k]))}</ETag>"
                f"<Size>{len(objects[k])}</Size><LastModified>2025-01-15T00:00:00.000Z</LastModified></Contents>"
                for k in keys
            )
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>{escape(bucket.strip("/"))}</Name>'
                f"<KeyCount>{len(keys)}</KeyCount><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
            )
            return 200, {"Content-Type": "application/xml"}, body.encode()
        if method == "DELETE":
            objects.pop(path, None)
            return 204, {}, b""
        if method == "PUT":
            if path.count("/") < 2:  # CreateBucket
                return 200, {}, b""
            held = objects.get(path)
            if headers.get("if-none-match") == "*" and held is not None:
                return xml(412, "Error", Code="PreconditionFailed", Message="the object exists")
            if "if-match" in headers:
                if held is None:
                    return xml(404, "Error", Code="NoSuchKey", Message="no such key")
                if headers["if-match"] != etag(held):
                    return xml(412, "Error", Code="PreconditionFailed", Message="another version")
            if "uploadId" in query:
                uploads[query["uploadId"][0]][int(query["partNumber"][0])] = body
            else:
                objects[path] = body
            return 200, {"ETag": etag(body)}, b""
        if method == "POST":
            if "uploads" in query:
                upload_id = uuid.uuid4().hex
                uploads[upload_id] = {}
                return xml(200, "InitiateMultipartUploadResult", UploadId=upload_id)
            stored = uploads.pop(query["uploadId"][0])
            objects[path] = data = b"".join(stored[n] for n in sorted(stored))
            return xml(200, "CompleteMultipartUploadResult", Key=path, ETag=etag(data))
        data = objects.get(path)
        if data is None:
            return xml(404, "Error", Code="NoSuchKey", Message="no such key")
        found = {
            "ETag": etag(data),
            "Last-Modified": LAST_MODIFIED,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        wanted = headers.get("range", "")
        if wanted.startswith("bytes="):
            first, _, last = wanted[6:].partition("-")
            end = min(int(last) if last else len(data) - 1, len(data) - 1)
            found["Content-Range"] = f"bytes {first}-{end}/{len(data)}"
            return 206, found, data[int(first) : end + 1]
        return 200, found, data

    return app


def dynamodb_app():
    """The DynamoDB calls the image vectors make (CreateTable, DescribeTable, BatchGetItem,
    BatchWriteItem), in memory, for tables whose hash key is `image`: moto's server spends
    several milliseconds of the shared cores on each."""
    import json

    tables: dict[str, dict[str, dict]] = {}

    def app(method: str, target: str, headers: dict, body: bytes) -> Reply:
        operation = headers.get("x-amz-target", "").rpartition(".")[2]
        request = json.loads(body or b"{}")
        answer: dict = {}
        if operation == "CreateTable":
            tables.setdefault(request["TableName"], {})
            answer = {
                "TableDescription": {"TableName": request["TableName"], "TableStatus": "ACTIVE"}
            }
        elif operation == "DescribeTable":
            if request["TableName"] not in tables:
                return (
                    400,
                    {"Content-Type": "application/x-amz-json-1.0"},
                    json.dumps(
                        {"__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException"}
                    ).encode(),
                )
            answer = {"Table": {"TableName": request["TableName"], "TableStatus": "ACTIVE"}}
        elif operation == "BatchGetItem":
            answer = {"Responses": {}, "UnprocessedKeys": {}}
            for name, wanted in request["RequestItems"].items():
                names = [
                    n.strip()
                    for n in wanted.get("ProjectionExpression", "").split(",")
                    if n.strip()
                ]
                found = (tables[name].get(key["image"]["S"]) for key in wanted["Keys"])
                answer["Responses"][name] = [
                    {k: v for k, v in item.items() if not names or k in names}
                    for item in found
                    if item
                ]
        elif operation == "BatchWriteItem":
            for name, writes in request["RequestItems"].items():
                for write in writes:
                    item = write["PutRequest"]["Item"]
                    tables[name][item["image"]["S"]] = item
            answer = {"UnprocessedItems": {}}
        else:
            return 400, {}, b'{"__type": "UnknownOperationException"}'
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(answer).encode()

    return app


def bedrock_app(quota_per_minute: float = 0.0):
    """POST /model/<id>/invoke as Bedrock runtime answers it for Titan image embeddings, with one
    of 256 ready-made vectors picked by a checksum of the request: the benchmark measures the
    pipeline, not this server, so the request is not decoded. With a quota, a request beyond it is
    refused with 429 ThrottlingException; GET /quota says how many were admitted and refused."""
    import json

    from smartgo_analytics_tests.servers import RequestQuota, cheap_body

    length = re.compile(rb'"outputEmbeddingLength":\s*(\d+)')
    quota = RequestQuota(quota_per_minute) if quota_per_minute else None

    def app(method: str, target: str, headers: dict, body: bytes) -> Reply:
        if quota is not None and method == "GET" and target == "/quota":
            figures = {
                "admitted": len(quota.admitted),
                "refused": quota.refused,
                "admitted_per_minute": quota.admitted_per_minute(),
            }
            return 200, {"Content-Type": "application/json"}, json.dumps(figures).encode()
        if quota is not None and not quota.admit():
            return (
                429,
                {"x-amzn-ErrorType": "ThrottlingException"},
                b'{"message":"Too many requests"}',
            )
        wanted = length.search(body[-200:])
        if method != "POST" or not re.fullmatch(r"/model/[^/]+/invoke", target) or not wanted:
            return 404, {"x-amzn-ErrorType": "ResourceNotFoundException"}, b"{}"
        reply = cheap_body(zlib.crc32(body) & 0xFF, int(wanted.group(1)))
        return 200, {"Content-Type": "application/json"}, reply

    return app


async def serve(app, latency_s: float) -> None:
    """HTTP/1.1 with keep-alive on one event loop: a request costs this process a fraction of what a
    thread per connection costs, and these processes share the cores with the pipeline."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while request_line := await reader.readline():
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                if latency_s:
                    await asyncio.sleep(latency_s)
                status, reply_headers, reply = app(method, target, headers, body)
                head = [
                    f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                    f"Content-Length: {len(reply)}",
                ]
                head += [f"{name}: {value}" for name, value in reply_headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                if method != "HEAD":
                    writer.write(reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["cdn", "bedrock", "s3", "dynamodb", "moto"])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--pictures", choices=["drawings", "photos"], default="drawings")
    parser.add_argument("--quota", type=float, default=0.0, help="Bedrock requests per minute")
    args = parser.parse_args()
    # Serve until the parent closes our standard input.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    if args.kind == "moto":
        from smartgo_analytics.local.stack import start_moto

        print(f"PORT {start_moto().server_port}", flush=True)
        threading.Event().wait()
    app = {
        "cdn": lambda: cdn_app(
            distinct_images(args.images) if args.pictures == "drawings" else None
        ),
        "s3": s3_app,
        "dynamodb": dynamodb_app,
        "bedrock": lambda: bedrock_app(args.quota),
    }
    asyncio.run(serve(app[args.kind](), args.latency))


@dataclass(frozen=True)
class Loopback:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User and system CPU the server process has used so far."""
        return cpu_seconds(self.pid)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User and system CPU of a process, with `children` also that of the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = fields[11:15] if children else fields[11:13]
    return sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK")


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
