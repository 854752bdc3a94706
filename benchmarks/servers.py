"""Loopback servers for the benchmarks, each in its own process so that they do not share the
pipeline's interpreter lock: an image CDN and a Bedrock-compatible server with added latency, and
moto for S3 and DynamoDB.

Run as `python -m benchmarks.servers KIND [--latency S] [--images N]`; prints `PORT <n>` and serves
until its standard input closes.
"""

import argparse
import hashlib
import io
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["cdn", "bedrock", "moto"])
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
        else:
            state = servers.BedrockState()
            state.latency_s = args.latency
            state.cheap_vectors = True  # the server's own CPU is not what is being measured
            server = servers.bedrock_server(state)
        port = server.server_port
    print(f"PORT {port}", flush=True)
    sys.stdin.read()  # serve until the parent closes our standard input


@contextmanager
def loopback(kind: str, **options):
    """Start a server process; yield its base URL; stop it."""
    command = [sys.executable, "-m", "benchmarks.servers", kind]
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{kind} server did not start")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    threading.current_thread().name = "benchmark-server"
    main()
