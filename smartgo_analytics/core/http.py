"""Reading an HTTP answer from a server that is not trusted: which statuses may pass, how long a
server may ask to be left alone, and a body bounded in time and in decoded bytes.

- `transient_status`: 408, 429 and 5xx may pass (tried again); anything else is an answer.
- `retry_after_s`: `Retry-After` as seconds or as an HTTP date, of any size: a value too large to
  hold is infinite (the caller compares it with what is left of its allowance), never an error.
- `read_bounded`: the body, with one deadline for the whole exchange (connection, headers and
  body: `Deadline`, which cuts the connection when it passes, so a server that drips a byte a
  second cannot hold the caller) and at most `max_bytes` after the content encoding is undone,
  inflated a bounded piece at a time (a few kilobytes of gzip never become gigabytes). Only the
  encodings offered (`ACCEPT_ENCODING`) are read; stacked ones are refused by name.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

ACCEPT_ENCODING = "gzip, deflate"  # what can be inflated a bounded piece at a time
_INFLATED = ("gzip", "x-gzip", "deflate")


class UnreadableAnswer(Exception):
    """A body that cannot be read within the bounds, or in an encoding that was not offered."""


class DeadlinePassed(Exception):
    """The exchange outlasted its deadline."""


def transient_status(status: int) -> bool:
    """Whether an HTTP status may pass if asked again: 408, 429 and 5xx."""
    return status in (408, 429) or 500 <= status <= 599


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` asks for (a number or an HTTP date; 0 for a moment past), math.inf
    for one too large to hold (`1e999`, the year 9999 is merely large); None if absent or unreadable."""
    text = (value or "").strip()[:64]
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        try:
            seconds = (when - (now or datetime.now(UTC))).total_seconds()
        except OverflowError:
            return math.inf
    return None if math.isnan(seconds) else max(0.0, seconds)


class Deadline:
    """One deadline for an HTTP exchange made with `extensions=deadline.extensions()` on a client
    that keeps no connection alive: when it passes, the exchange's sockets are shut down, so a read
    blocked on a server that drips its headers or body ends at once (`passed` tells why)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.passed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def extensions(self) -> dict[str, Any]:
        return {"trace": self._trace}

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            passed = self.passed
        if passed:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def read_bounded(
    headers: Any, raw_chunks: Iterable[bytes], max_bytes: int, deadline: Deadline | None = None
) -> bytes:
    """The body from its raw chunks, decoded (identity, gzip or deflate) to at most `max_bytes`;
    UnreadableAnswer for more, for a corrupt or unoffered encoding; DeadlinePassed after it."""
    encoding = (headers.get("content-encoding") or "").strip().lower()
    codings = [c.strip() for c in encoding.split(",") if c.strip() not in ("", "identity")]
    if len(codings) > 1:
        raise UnreadableAnswer(f"stacked content encodings {encoding[:60]!r} are refused")
    if codings and codings[0] not in _INFLATED:
        raise UnreadableAnswer(f"content encoding {codings[0][:20]!r} was not offered")
    inflate = zlib.decompressobj(32 + zlib.MAX_WBITS) if codings else None
    body = bytearray()
    for raw in raw_chunks:
        if deadline is not None and deadline.passed:
            raise DeadlinePassed()
        pending = raw
        while pending:
            if inflate is None:
                piece, pending = pending, b""
            else:
                try:
                    piece = inflate.decompress(pending, max_bytes - len(body) + 1)
                except zlib.error:
                    raise UnreadableAnswer(f"corrupt {codings[0]} body") from None
                if inflate.unconsumed_tail:
                    raise UnreadableAnswer(f"over {max_bytes} bytes once inflated ({codings[0]})")
                pending = b""
                if inflate.eof and inflate.unused_data:  # another gzip member follows
                    pending, inflate = inflate.unused_data, zlib.decompressobj(32 + zlib.MAX_WBITS)
            body += piece
            if len(body) > max_bytes:
                raise UnreadableAnswer(f"over {max_bytes} bytes")
    if deadline is not None and deadline.passed:
        raise DeadlinePassed()
    return bytes(body)
