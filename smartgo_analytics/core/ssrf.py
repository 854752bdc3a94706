"""Which image URLs may be fetched: http(s) to public addresses, or to hosts on the allowlist."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]
MAX_URL_LENGTH = 8192


class UnsafeUrl(Exception):
    """The URL must not be fetched; the message is the reason."""


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UnsafeUrl(f"cannot resolve host {host[:80]!r}: {error.strerror}") from None
    except (UnicodeError, ValueError, OSError) as error:  # not a name IDNA can encode, and the like
        raise UnsafeUrl(f"cannot resolve host {host[:80]!r}: {type(error).__name__}") from None
    return sorted({str(info[4][0]) for info in infos})


# Not globally reachable by the IANA special-purpose registries, though this Python's `ipaddress`
# says `is_global` of them: the IETF protocol block (all of it: its few global exceptions are
# anycast services no image lives on) and NAT64's local-use prefix.
NOT_GLOBAL = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "64:ff9b:1::/48"))
NAT64 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and may be routed to: IPv4-mapped, 6to4, Teredo
    (server and client), NAT64 and IPv4-compatible forms."""
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo:
        found.extend(ip.teredo)
    if any(ip in net for net in NAT64) or ip in IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def forbidden_reason(address: str) -> str | None:
    """Why an address must not be connected to, or None for a globally routable one. An IPv6 form
    that carries an IPv4 address is judged by that address too."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"unparsable address {address[:60]!r}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return forbidden_reason(str(ip.ipv4_mapped))
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in IPV4_COMPATIBLE and int(ip) > 1:
            return f"deprecated IPv4-compatible address {ip}"
        for inner in embedded_ipv4(ip):
            reason = forbidden_reason(str(inner))
            if reason:
                return f"{reason} inside {ip}"
    for label, test in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
    ):
        if test:
            return f"{label} address {ip}"
    if not ip.is_global or any(ip in net for net in NOT_GLOBAL if net.version == ip.version):
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
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"URL of {len(url)} characters, over {MAX_URL_LENGTH}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeUrl(f"control character in URL {url[:80]!r}")
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = resolver(host, port)
    if host.lower() in {entry.lower() for entry in allowlist}:
        return addresses
    for address in addresses:
        reason = forbidden_reason(address)
        if reason:
            raise UnsafeUrl(f"host {host!r} resolves to a {reason}")
    return addresses
