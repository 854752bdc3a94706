"""The image fetcher connects only to addresses it has checked, even when DNS changes its answer."""

import socket
from http.server import BaseHTTPRequestHandler

import pytest

from smartgo_analytics.resources.images import ImageFetcher, ImageFetchError
from smartgo_analytics_tests import servers

PUBLIC = "93.184.216.34"


@pytest.fixture
def image_server():
    """A loopback server that answers every GET with a tiny PNG (ETag "v1", or 304 Not Modified
    when asked with it) and records who asked for what, and each connection it accepted."""
    seen: list[tuple[str, str]] = []
    connections: list[tuple] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def setup(self):
            connections.append(self.client_address)
            super().setup()

        def do_GET(self):
            seen.append((self.headers.get("Host"), self.path))
            unchanged = self.headers.get("If-None-Match") == '"v1"'
            body = b"" if unchanged else servers.png(size=(4, 4))
            self.send_response(304 if unchanged else 200)
            self.send_header("Content-Type", "image/png")
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = servers.start(Handler)
    yield server.server_port, seen, connections
    server.shutdown()


def dns(monkeypatch, answers: dict[str, list[str]]):
    """Answer lookups of the given names from `answers`, one answer per lookup, the last one
    repeated; every other name as the system would."""
    system = socket.getaddrinfo
    lookups: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return system(host, port, *args, **kwargs)
        n = lookups[host] = lookups.get(host, 0) + 1
        address = answers[host][min(n, len(answers[host])) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_a_dns_answer_that_changes_after_the_check_is_not_followed(monkeypatch, image_server):
    port, seen, _ = image_server
    # Checked: a public address. Any later lookup: loopback, where the image server listens.
    lookups = dns(monkeypatch, {"images.rebind.example": [PUBLIC, "127.0.0.1"]})
    fetcher = ImageFetcher(timeout_s=1.0, retries=0)

    with pytest.raises(ImageFetchError, match="connection error|timed out"):
        fetcher.fetch(f"http://images.rebind.example:{port}/a.png")

    assert seen == []
    assert lookups == {"images.rebind.example": 1}


def test_the_checked_address_is_used_with_the_host_name_kept(monkeypatch, image_server):
    port, seen, _ = image_server
    lookups = dns(monkeypatch, {"images.internal": ["127.0.0.1", PUBLIC]})
    fetcher = ImageFetcher(timeout_s=1.0, retries=0, allowlist=["images.internal"])

    fetched = fetcher.fetch(f"http://images.internal:{port}/b.png?size=4")

    assert fetched.data == servers.png(size=(4, 4))
    assert seen == [(f"images.internal:{port}", "/b.png?size=4")]
    assert lookups == {"images.internal": 1}


def test_a_host_is_looked_up_once_for_many_images(monkeypatch, image_server):
    port, seen, _ = image_server
    lookups = dns(monkeypatch, {"images.internal": ["127.0.0.1"]})
    fetcher = ImageFetcher(timeout_s=1.0, retries=0, allowlist=["images.internal"])

    for n in range(5):
        fetcher.fetch(f"http://images.internal:{port}/{n}.png")

    assert len(seen) == 5
    assert lookups == {"images.internal": 1}


def test_a_fetcher_torn_down_after_one_run_fetches_again_in_the_next(monkeypatch, image_server):
    port, seen, _ = image_server
    dns(monkeypatch, {"images.internal": ["127.0.0.1"]})
    fetcher = ImageFetcher(timeout_s=1.0, retries=0, allowlist=["images.internal"])

    fetcher.fetch(f"http://images.internal:{port}/first.png")
    fetcher.teardown_after_execution(None)
    fetcher.fetch(f"http://images.internal:{port}/second.png")

    assert [path for _, path in seen] == ["/first.png", "/second.png"]


def test_unchanged_images_are_revalidated_over_one_kept_alive_connection(image_server):
    port, seen, connections = image_server
    fetcher = ImageFetcher(allowlist=["127.0.0.1"], retries=0)
    url = f"http://127.0.0.1:{port}/img"
    assert fetcher.fetch(f"{url}/0.png").etag == '"v1"'
    for n in range(5):
        assert fetcher.fetch(f"{url}/{n}.png", if_none_match='"v1"').data is None
    assert len(seen) == 6
    assert len(connections) == 1  # a TLS handshake per image, in production, otherwise
