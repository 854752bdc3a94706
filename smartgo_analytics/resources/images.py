"""Downloading product images from the CDN, safely."""

from __future__ import annotations

import functools
import ssl
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin

import httpx
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from smartgo_analytics.core.outage import Transient
from smartgo_analytics.core.retry import call_with_retries
from smartgo_analytics.core.ssrf import UnsafeUrl, check_url, resolve

RETRYABLE_STATUS = {429, 500, 502, 503, 504}
DNS_CACHE_S = 30.0
USER_AGENT = "smartgo-analytics/1"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The CA bundle, loaded once per process (it costs tens of milliseconds): every thread's pool
    shares it, and worker processes forked from a process that loaded it inherit it."""
    return ssl.create_default_context()


@dataclass(frozen=True)
class Fetched:
    data: bytes | None  # None: not modified since the ETag that was sent
    etag: str | None
    held: int = 0  # bytes taken from the caller's budget for `data`: the caller gives them back


class Budget(Protocol):
    """Bytes to take before a body is read (core/imaging.DecodeBudget)."""

    def take(self, cost: int) -> int: ...

    def give(self, cost: int) -> None: ...


class ImageFetchError(Exception):
    """A download that failed for good; the message is the per-sale reason."""


class ImageUnavailable(ImageFetchError, Transient):
    """A download that failed for a reason that may pass: 5xx, 429, a timeout, a connection error."""


class _Retryable(Exception):
    pass


class ImageFetcher(ConfigurableResource):
    """http(s) only, public addresses only (unless allowlisted), every redirect re-checked,
    a deadline per attempt, a size cap while streaming, retries on transient failures."""

    timeout_s: float = Field(default=30.0, description="whole-download deadline per attempt")
    max_bytes: int = Field(default=10 * 1024 * 1024, description="larger bodies are refused")
    max_redirects: int = 3
    retries: int = Field(
        default=3, description="retries of 5xx, 429, timeouts and connection errors"
    )
    backoff_base_s: float = Field(
        default=1.0, description="first retry delay; then doubled, with jitter"
    )
    allowlist: list[str] = Field(default_factory=list, description="IMAGE_URL_ALLOWLIST hosts")

    _transports: list[httpx.HTTPTransport] = PrivateAttr(default_factory=list)
    _local: threading.local = PrivateAttr(default_factory=threading.local)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _answers: dict[tuple[str, int], tuple[float, list[str]]] = PrivateAttr(default_factory=dict)

    def _resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses, looked up at most once per DNS_CACHE_S: a day's images come from a
        few CDN hosts, and a lookup per image is a DNS query per image. What is cached is what was
        checked, and the connection goes to exactly that."""
        now = time.monotonic()
        cached = self._answers.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = resolve(host, port)
        self._answers[(host, port)] = (now + DNS_CACHE_S, addresses)
        return addresses

    def transport(self) -> httpx.HTTPTransport:
        """The calling thread's own connection pool. A download thread makes one request at a time,
        so its pool stays small; one pool shared by a hundred threads spends its time on the pool's
        lock. Requests go to the transport itself: redirects are followed here, one checked hop at
        a time, and an image download has no use for the client's cookie jar and layers, which cost
        about a third of a conditional request's CPU."""
        transport = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._local.transport = httpx.HTTPTransport(
                verify=tls_context(), limits=httpx.Limits(max_connections=self.max_redirects + 1)
            )
            with self._lock:
                self._transports.append(transport)
        return transport

    def teardown_after_execution(self, context) -> None:
        with self._lock:
            transports, self._transports = self._transports, []
            self._local = threading.local()  # a thread that fetches again gets a new pool
        for transport in transports:
            transport.close()

    def fetch(
        self, url: str, if_none_match: str | None = None, budget: Budget | None = None
    ) -> Fetched:
        """The image bytes and ETag, or ImageFetchError with the reason.

        With `if_none_match` (an ETag from an earlier download) an unchanged image costs one
        conditional request and returns no bytes. With `budget`, the body's bytes (as declared, or
        `max_bytes`) are taken from it before it is read, and are the caller's to give back.
        """
        try:
            return call_with_retries(
                lambda: self._attempt(url, if_none_match, budget),
                retryable=lambda error: isinstance(error, _Retryable),
                retries=self.retries,
                base_s=self.backoff_base_s,
            )
        except _Retryable as error:
            raise ImageUnavailable(f"{error} (after {self.retries} retries)") from None
        except ImageFetchError:
            raise
        except Exception as error:  # what a URL or an answer makes httpx or a codec raise
            raise ImageFetchError(
                f"unusable URL or answer: {type(error).__name__}: {str(error)[:100]!r}"
            ) from None

    def _attempt(self, url: str, if_none_match: str | None, budget: Budget | None) -> Fetched:
        deadline = time.monotonic() + self.timeout_s
        current = url
        for _ in range(self.max_redirects + 1):
            try:
                addresses = check_url(current, self.allowlist, resolver=self._resolve)
            except UnsafeUrl as error:
                raise ImageFetchError(f"refused: {error}") from None
            try:
                headers = {"If-None-Match": if_none_match} if if_none_match else {}
                with self._send(current, addresses, headers) as response:
                    if response.status_code == 304 and if_none_match:
                        response.read()  # it has no body; read, the connection serves the next image
                        return Fetched(None, response.headers.get("etag") or if_none_match)
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise ImageFetchError(f"HTTP {response.status_code} without Location")
                        current = urljoin(current, location)
                        continue
                    if response.status_code in RETRYABLE_STATUS:
                        raise _Retryable(f"HTTP {response.status_code}")
                    if response.status_code != 200:
                        raise ImageFetchError(f"HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise ImageFetchError(f"too large: {int(declared)} bytes declared")
                    size = int(declared) if declared and declared.isdigit() else self.max_bytes
                    # The pieces as read and the body they are joined into: twice its size.
                    held = budget.take(2 * max(size, 1)) if budget is not None else 0
                    try:
                        body = self._read_body(response, deadline)
                    except BaseException:
                        if budget is not None:
                            budget.give(held)
                        raise
                    return Fetched(body, response.headers.get("etag"), held)
            except httpx.TimeoutException:
                raise _Retryable(f"timed out after {self.timeout_s:g} s") from None
            except httpx.TransportError as error:
                raise _Retryable(f"connection error: {type(error).__name__}") from None
        raise ImageFetchError(f"more than {self.max_redirects} redirects")

    def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        """The body, at most `max_bytes` of it after any content encoding is undone. A compressed
        body is inflated a bounded piece at a time: a small gzip of zeros never becomes gigabytes in
        memory (httpx would inflate each received chunk whole)."""
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib framing
        elif encoding not in ("", "identity"):
            raise ImageFetchError(f"unsupported content encoding {encoding[:20]!r}")
        else:
            inflate = None
        chunks, size = [], 0
        for raw in response.iter_raw():
            if inflate is None:
                chunk = raw
            else:
                try:
                    chunk = inflate.decompress(raw, self.max_bytes - size + 1)
                except zlib.error:
                    raise ImageFetchError(f"corrupt {encoding} body") from None
                if inflate.unconsumed_tail:
                    raise ImageFetchError(f"too large: over {self.max_bytes} bytes ({encoding})")
            size += len(chunk)
            if size > self.max_bytes:
                raise ImageFetchError(f"too large: over {self.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise _Retryable(f"timed out after {self.timeout_s:g} s")
            chunks.append(chunk)
        return b"".join(chunks)

    @contextmanager
    def _send(self, url: str, addresses: list[str], headers: dict[str, str]):
        """GET `url` as a streamed response, connected to one of the `addresses` that were just
        checked rather than to whatever a second DNS lookup answers (DNS rebinding). The request
        still names the host: Host header, TLS server name and certificate check."""
        target = httpx.URL(url)
        # Images come compressed already: ask for the bytes as they are.
        named = {
            **headers,
            "Host": target.netloc.decode("ascii"),
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",
        }
        extensions = {
            "timeout": httpx.Timeout(self.timeout_s).as_dict(),
            "sni_hostname": target.host,
        }
        transport = self.transport()
        for n, address in enumerate(addresses, start=1):
            request = httpx.Request(
                "GET", target.copy_with(host=address), headers=named, extensions=extensions
            )
            try:
                response = transport.handle_request(request)
                break
            except httpx.ConnectError:
                if n == len(addresses):  # every checked address refused the connection
                    raise
        try:
            yield response
        finally:
            response.close()
