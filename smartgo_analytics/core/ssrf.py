"""Which image URLs may be fetched: http(s) to public addresses, or to hosts on the allowlist."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]


class UnsafeUrl(Exception):
    """The URL must not be fetched; the message is the reason."""


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UnsafeUrl(f"cannot resolve host {host!r}: {error.strerror}") from None
    return sorted({info[4][0] for info in infos})


def forbidden_reason(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for label, test in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
    ):
        if test:
            return f"{label} address {ip}"
    if not ip.is_global:
        return f"non-public address {ip}"
    return None


def check_url(url: str, allowlist: Iterable[str] = (), resolver: Resolver = resolve) -> list[str]:
    """Raise UnsafeUrl unless `url` may be fetched. Returns the host's addresses, which the
    connection must use: all of them checked, unless the host is on the allowlist."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl(f"malformed URL {url[:80]!r}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"scheme {parts.scheme or '(none)'!r} is not http or https")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("URL has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = resolver(host, port)
    if host.lower() in {entry.lower() for entry in allowlist}:
        return addresses
    for address in addresses:
        reason = forbidden_reason(address)
        if reason:
            raise UnsafeUrl(f"host {host!r} resolves to a {reason}")
    return addresses
