"""Fetching an ``http(s)://`` URL for an image without reaching the serving machine's own network, within one
deadline and a size cap, with the standard library only.

What a fetch does (`fetch_url`):

- The URL must be ``http://`` or ``https://``, without user name or password.
- Each hop resolves the host name ONCE (`socket.getaddrinfo`), checks EVERY address it resolves to with the address
  policy, and connects to one of exactly those checked addresses; the host name goes only into the ``Host`` header
  and, for https, the TLS server name, against which the certificate is verified. A name that answers a public
  address to the check and a private one to the connection (DNS rebinding) cannot reach the private one: there is
  no second lookup. Every spelling of an address (``localhost``, ``127.1``, ``2130706433``, ``0x7f000001``,
  ``0177.0.0.1``, ``[::ffff:127.0.0.1]``, ...) is judged by the address it resolves to.
- The default policy, `is_public_address`, lets through globally routable unicast addresses only (see there);
  `is_usable_address` (the callers' ``allow_private_urls=True``) also lets through private, loopback and link-local
  ones.
- At most `MAX_REDIRECTS` redirects, each to http(s) and each hop checked as above.
- One deadline, ``timeout`` seconds from the call, for all of it: connecting, the TLS handshake, sending and every
  single read of the status line, the headers and the body get the time left as their socket timeout, so a server
  that trickles its headers or its body a byte at a time is cut off at the deadline. No thread is started, and the
  socket is closed before the call returns, whatever happened.
- At most ``max_bytes`` bytes of body, counted as they arrive; the identity encoding is asked for and nothing is
  decompressed, so a compressed body is refused rather than inflated.
- Environment proxies (``http_proxy``, ...) are not used: through a proxy, the proxy would choose the address.

Name resolution is the system resolver's, which takes no timeout: a lookup is bounded by the resolver's own settings
(``timeout`` and ``attempts`` of ``/etc/resolv.conf``), not by ``timeout``; a deadline already passed starts no
lookup.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable

__all__ = [
    "MAX_REDIRECTS",
    "AddressPolicy",
    "FetchFailedError",
    "FetchTooLargeError",
    "fetch_url",
    "is_public_address",
    "is_usable_address",
]

MAX_REDIRECTS = 5
_CHUNK_BYTES = 64 * 1024
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# The NAT64 well-known prefix (RFC 6052): the last 32 bits are the IPv4 address that the translator connects to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Deprecated 6to4 relay anycast (RFC 7526), which Python's ipaddress still counts as global.
_NOT_GLOBAL_V4 = (ipaddress.ip_network("192.88.99.0/24"),)
# Characters left as they are when the request target is percent-encoded: RFC 3986's reserved and unreserved ones
# and "%" (already encoded octets). Spaces, control characters and non-ASCII text are encoded, so that nothing in a
# URL can end the request line or add a header.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]


class FetchFailedError(Exception):
    """The URL was not fetched: a refused address, an unreachable or slow server, an error status, a bad redirect,
    a TLS failure, a compressed body. ``detail`` says which, for the operator's logs only: what callers show to
    whoever sent the URL must not tell these apart, or the fetch would map the network behind it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class FetchTooLargeError(Exception):
    """The body is (or is declared) larger than the cap; the message says which."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and leads to: IPv4-mapped (``::ffff:a.b.c.d``), 6to4 (``2002::/16``)
    or NAT64 (``64:ff9b::/96``)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a globally routable unicast address, the only kind fetched by default.

    Refused: loopback (127/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7), carrier-grade NAT (100.64/10),
    link-local (169.254/16 with the clouds' metadata services, fe80::/10), site-local (fec0::/10), unspecified
    (0.0.0.0/8, ::), multicast, broadcast, documentation, benchmarking and reserved ranges (IPv4-compatible ``::/96``
    included), Teredo (2001::/32); IPv4-mapped, 6to4 and NAT64 addresses are judged by the IPv4 address they carry.
    This is Python's ``is_global`` with the ranges it misses in some versions (multicast, site-local, reserved) ruled
    out explicitly.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
        if address.is_site_local or address.teredo is not None:
            return False
    elif any(address in network for network in _NOT_GLOBAL_V4):
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def is_usable_address(address: IPAddress) -> bool:
    """Any address a server can have: everything but the unspecified address, multicast and broadcast (also inside
    IPv4-mapped, 6to4 and NAT64 addresses). The policy of ``allow_private_urls=True``: loopback, private and
    link-local addresses (169.254.169.254, a cloud's metadata service, among them) are fetched."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_usable_address(embedded)
    broadcast = address == ipaddress.IPv4Address("255.255.255.255")
    return not (address.is_unspecified or address.is_multicast or broadcast)


class _DeadlineReader(io.RawIOBase):
    """Reads a socket with the time left to the deadline as the timeout of each read."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        self._connection.settimeout(_time_left(self._deadline))
        return self._connection.recv_into(buffer)


class _DeadlineSocket:
    """What `http.client` uses of a socket (``sendall``, ``makefile``, ``close``), each call held to the deadline.
    Closing is left to `fetch_url`, which owns the real socket."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        self._connection = connection
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._connection.settimeout(_time_left(self._deadline))
        self._connection.sendall(data)

    def makefile(self, mode: str, *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._connection, self._deadline))

    def close(self) -> None:
        pass


class _ConnectedHTTP(http.client.HTTPConnection):
    """An HTTP connection over a socket already connected to a checked address; ``host`` is the URL's host name,
    for the ``Host`` header only."""

    def __init__(self, host: str, port: int, default_port: int, connection: _DeadlineSocket) -> None:
        super().__init__(host, port)
        self.default_port = default_port
        self.sock = connection

    def connect(self) -> None:
        # Reached only if http.client wanted a second connection, which would not be checked.
        raise http.client.HTTPException("the connection to the checked address is closed")


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


def _checked_addresses(host: str, port: int, address_allowed: AddressPolicy, deadline: float) -> list[tuple]:
    """``getaddrinfo``'s entries for ``host`` if every address it resolves to is allowed."""
    _time_left(deadline)
    try:
        entries = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as error:
        raise FetchFailedError(f"{host!r} did not resolve ({error})") from None
    entries = [entry for entry in entries if entry[0] in (socket.AF_INET, socket.AF_INET6)]
    if not entries:
        raise FetchFailedError(f"{host!r} resolved to no IP address")
    for entry in entries:
        address = ipaddress.ip_address(entry[4][0])
        if not address_allowed(address):
            raise FetchFailedError(f"{host!r} resolved to {address}, which the address policy refuses")
    return entries


def _connect(entries: list[tuple], deadline: float) -> socket.socket:
    """A TCP connection to the first of the checked addresses that answers."""
    failures = []
    for family, kind, protocol, _, address in entries:
        connection = socket.socket(family, kind, protocol)
        try:
            connection.settimeout(_time_left(deadline))
            connection.connect(address)
        except OSError as error:
            connection.close()
            failures.append(f"{address[0]}: {error}")
            if isinstance(error, TimeoutError):
                break
            continue
        return connection
    raise FetchFailedError(f"no connection ({'; '.join(failures)})")


def _one_hop(url: str, deadline: float, max_bytes: int, address_allowed: AddressPolicy) -> tuple[bytes | None, str]:
    """GET ``url``: ``(body, url)``, or ``(None, next URL)`` for a redirect."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchFailedError(f"{url[:100]!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise FetchFailedError("the URL carries a user name or password")
    try:
        port = parts.port
    except ValueError as error:
        raise FetchFailedError(f"bad port ({error})") from None
    host = parts.hostname
    if not host:
        raise FetchFailedError("the URL names no host")
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    entries = _checked_addresses(host, port, address_allowed, deadline)
    connection = _connect(entries, deadline)
    try:
        if scheme == "https":
            connection.settimeout(_time_left(deadline))
            # Certificates are verified for the URL's host name, whatever address the name resolved to.
            connection = ssl.create_default_context().wrap_socket(connection, server_hostname=host)
        exchange = _ConnectedHTTP(host, port, default_port, _DeadlineSocket(connection, deadline))
        target = urllib.parse.quote(urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")), _TARGET_SAFE)
        exchange.request(
            "GET", target, headers={"Accept-Encoding": "identity", "User-Agent": "muse-hf", "Connection": "close"}
        )
        response = exchange.getresponse()
        try:
            if response.status in _REDIRECT_STATUSES and response.getheader("Location"):
                return None, urllib.parse.urljoin(url, response.getheader("Location"))
            if not 200 <= response.status < 300:
                raise FetchFailedError(f"HTTP status {response.status}")
            encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise FetchFailedError(f"a {encoding}-compressed body although none was asked for")
            declared = (response.getheader("Content-Length") or "").strip()
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchTooLargeError(f"its Content-Length is {int(declared)} bytes")
            body = bytearray()
            while chunk := response.read(_CHUNK_BYTES):
                body += chunk
                if len(body) > max_bytes:
                    raise FetchTooLargeError(f"it sent more than {max_bytes} bytes")
            return bytes(body), url
        finally:
            response.close()
    finally:
        connection.close()


def fetch_url(url: str, timeout: float, max_bytes: int, address_allowed: AddressPolicy = is_public_address) -> bytes:
    """The body of the ``http(s)://`` URL ``url``, under the rules of the module docs.

    Args:
        url: the URL.
        timeout: seconds for the whole fetch, redirects included.
        max_bytes: the most bytes of body taken.
        address_allowed: the address policy, `is_public_address` by default.

    Raises:
        FetchTooLargeError: the body is, or is declared, larger than ``max_bytes``.
        FetchFailedError: anything else that stops the fetch (its ``detail`` is for logs, not for the URL's sender).
    """
    deadline = time.monotonic() + timeout
    current = url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            body, current = _one_hop(current, deadline, max_bytes, address_allowed)
            if body is not None:
                return body
    except (FetchFailedError, FetchTooLargeError):
        raise
    # Sockets, TLS and HTTP parsing fail in many ways (OSError, ssl.SSLError, http.client.HTTPException,
    # TimeoutError, ValueError, UnicodeError); each is one failed fetch.
    except Exception as error:  # noqa: BLE001
        raise FetchFailedError(f"{type(error).__name__}: {error}") from None
    raise FetchFailedError(f"more than {MAX_REDIRECTS} redirects")
