"""No request to a private address, ever, except the services the owner configured.

Two checks, both for every connection, every redirect hop included:

* each URL, before it is requested: http(s) only; a host given as an IP address must be public;
  ``localhost`` and its kin are refused (unless the exact origin is a configured service);
* each host name, when the connection is made: :class:`GuardedResolver` is the connector's resolver,
  so the addresses aiohttp connects to are the ones checked (a DNS answer that changes between a check
  and the connection cannot slip through), and only public ones are kept.

The configured services (the API's base, later the self-hosted backends) are allowed by their exact
origin (scheme, host, port): another port or scheme on the same host is refused. Redirects are never
followed by aiohttp here: the caller follows them one hop at a time, checking each.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

Origin = tuple[str, str, int]  # scheme, host (lower case), port


def origin_of(url: str) -> Origin | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return parts.scheme, parts.hostname.lower(), port


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None or ip.teredo is not None:
            return False  # tunnelled addresses: what is behind them is not for us to reach
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback)


def _is_local_name(host: str) -> bool:
    host = host.rstrip(".")
    return host in ("localhost", "localhost.localdomain") or host.endswith((".localhost", ".local"))


class BlockedAddress(Exception):
    """A URL that leads to an address the bot must not reach."""


class BlockedName(OSError):
    """A host name with no address the bot may reach (raised when connecting)."""


class Guard:
    """The allowed origins, and the check of each URL before it is requested."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed: set[Origin] = {o for o in map(origin_of, allowed) if o is not None}

    def check(self, url: str) -> Origin:
        """Raises :class:`BlockedAddress` unless ``url`` may be requested."""
        origin = origin_of(url)
        if origin is None:
            raise BlockedAddress("not an http(s) URL")
        if origin in self.allowed:
            return origin
        _, host, _ = origin
        if any((h, p) == (host, origin[2]) for _, h, p in self.allowed):
            raise BlockedAddress("a configured service's host, with another scheme")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            if _is_local_name(host):
                raise BlockedAddress("a local host name") from None
            return origin  # a name: its addresses are checked when the connection is made
        if not is_public(host):
            raise BlockedAddress("a private address")
        return origin

    def resolver(self, inner: AbstractResolver | None = None) -> GuardedResolver:
        return GuardedResolver({(h, p) for _, h, p in self.allowed}, inner)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only public addresses, except for the configured services' own
    (host, port). A name with no public address fails the connection (``OSError``)."""

    def __init__(self, allowed: set[tuple[str, int]], inner: AbstractResolver | None = None) -> None:
        self._allowed = allowed
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if (host.lower(), port) in self._allowed:
            return answers
        public = [a for a in answers if is_public(a["host"])]
        if not public:
            raise BlockedName(f"{host} has no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()
