"""What the comparables page lets in, as one ASGI middleware in front of the app:

- only the hosts it was started for (a DNS-rebound name is refused before any route runs);
- beyond loopback, a token on every request (header, cookie, or once in the query string);
- a POST only from the page's own origin (`Origin` / `Sec-Fetch-Site`), since a POST is what may
  cost a Bedrock call or reach out for a URL; browsers send one of them with every cross-site POST;
- those POSTs rate-limited per client, and a request body that is slower than `body_seconds`
  refused, so a slow upload holds nothing for long;
- on every answer: a CSP the page satisfies (its one style block by nonce), `frame-ancestors
  'none'`, `nosniff`, no referrer, and `no-store` on the page and the API.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "smartgo_page_token"
CSP = (
    "default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data: https: {pictures}; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class BodyTooSlow(Exception):
    """The request's body did not arrive within the page's limit."""


@dataclass
class Guard:
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    token: str | None = None
    asks_per_minute: int = 20  # POSTs (uploads, URL asks) per client
    body_seconds: float = 15.0
    # Where pictures come from besides the page and https (an object store's http endpoint).
    picture_origins: tuple[str, ...] = ()
    _asks: defaultdict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def host_allowed(self, host_header: str) -> bool:
        return _hostname(host_header) in {h.lower().strip("[]") for h in self.allowed_hosts}

    def refusal(self, scope: dict, headers: dict[str, str]) -> tuple[int, str] | None:
        """Why the request is refused (status, text), or None."""
        host = headers.get("host", "")
        if not self.host_allowed(host):
            return 421, "this server does not answer for that host"
        if self.token and not self._has_token(scope, headers):
            return 401, "a token is needed: open the page's link with ?token=..."
        if scope["method"] == "POST" and not _same_origin(headers, host):
            return 403, "a question is sent from the page itself, not from another site"
        if scope["method"] == "POST" and not self._admit(_client(scope)):
            return 429, f"at most {self.asks_per_minute} questions a minute: try again shortly"
        return None

    def _has_token(self, scope: dict, headers: dict[str, str]) -> bool:
        assert self.token is not None
        offered = [headers.get("authorization", "").removeprefix("Bearer ").strip()]
        cookie = SimpleCookie(headers.get("cookie", ""))
        if TOKEN_COOKIE in cookie:
            offered.append(cookie[TOKEN_COOKIE].value)
        offered += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        return any(hmac.compare_digest(o.encode(), self.token.encode()) for o in offered if o)

    def _admit(self, client: str) -> bool:
        now = time.monotonic()
        recent = self._asks[client]
        while recent and recent[0] < now - 60:
            recent.popleft()
        if len(recent) >= self.asks_per_minute:
            return False
        recent.append(now)
        return True


def _same_origin(headers: dict[str, str], host: str) -> bool:
    """A browser says where a request comes from in `Sec-Fetch-Site`, which no page can set; one
    that does not, in `Origin`. A client that sends neither is not a browser, so no other site's
    page can have sent it."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc.lower() == host.lower()


def _hostname(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _client(scope: dict) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


class GuardMiddleware:
    def __init__(self, app, guard: Guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        nonce = secrets.token_urlsafe(12)
        scope.setdefault("state", {})["csp_nonce"] = nonce
        extra = _answer_headers(scope["path"], nonce, " ".join(self.guard.picture_origins))
        asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        if self.guard.token and any(
            hmac.compare_digest(a.encode(), self.guard.token.encode()) for a in asked
        ):
            # Secure when the page is served over HTTPS, itself or behind a proxy that says so.
            https = scope.get("scheme") == "https" or headers.get("x-forwarded-proto") == "https"
            cookie = f"{TOKEN_COOKIE}={self.guard.token}; HttpOnly; SameSite=Strict; Path=/"
            extra.append((b"set-cookie", (cookie + ("; Secure" if https else "")).encode()))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [(n, v) for n, v in extra if n not in present or n == b"set-cookie"]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        refused = self.guard.refusal(scope, headers)
        if refused is not None:
            status, text = refused
            await _plain(send_with_headers, status, text)
            return
        await self.app(scope, _timed(receive, self.guard.body_seconds), send_with_headers)


def _answer_headers(path: str, nonce: str, pictures: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-security-policy", CSP.format(nonce=nonce, pictures=pictures).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        # Not no-referrer: Chromium then sends `Origin: null` with the page's own form.
        (b"referrer-policy", b"same-origin"),
    ]
    if not path.startswith("/pictures/"):
        headers.append((b"cache-control", b"no-store"))
    return headers


def _timed(receive, seconds: float):
    """`receive`, but a body that has not all arrived `seconds` after the request began raises
    BodyTooSlow (the app answers 408); once the body is in, waiting for a disconnect is not timed."""
    deadline = asyncio.get_running_loop().time() + seconds
    done = False

    async def timed():
        nonlocal done
        if done:
            return await receive()
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(receive(), max(remaining, 0.001))
        except TimeoutError:
            raise BodyTooSlow(f"the request's body took more than {seconds:g} s") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            done = True
        return message

    return timed


async def _plain(send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
