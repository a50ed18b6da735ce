"""Which URLs a build may fetch, and a fetch that keeps to it (docs/SECURITY.md).

URL lists come from strangers. A URL is refused, before any connection is opened, when its scheme
is not http/https, when it cannot be parsed, or when its host resolves to any address that is
loopback, private, link-local, multicast, reserved, unspecified or otherwise not global, unless
that address lies in `allowed_networks`. `precheck_url` does what needs no network (scheme,
syntax, literal IP addresses) and runs on the whole list before img2dataset sees it;
`fetch` resolves the host, checks every address, connects to a checked address (so a second DNS
answer cannot swap it), follows redirects itself re-checking each hop, and stops at `max_bytes`
or at the request's total deadline. A refusal is `UrlRefused(reason)`; the row's failure code is
`url_refused:<reason>` (`refusal_status`). Messages never carry a resolved address or a local path.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from shards.schema import URL_REFUSED_PREFIX

ALLOWED_SCHEMES = ("http", "https")
POLICY_ENV = "LONGCAP_URL_POLICY"  # the policy as JSON, for img2dataset's child processes
MAX_REDIRECTS = 10  # as urllib's HTTPRedirectHandler
REDIRECT_CODES = (301, 302, 303, 307, 308)
_CHUNK = 1 << 16
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]|\s")  # whitespace, control characters
_MAYBE_ADDRESS = re.compile(r"[0-9.]+$|.*:")  # dotted digits, or IPv6 (urlsplit unbrackets it)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class UrlRefused(Exception):
    """A URL the policy does not fetch; `reason` is one word (scheme, syntax, address, size...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{URL_REFUSED_PREFIX}{reason}: {detail}")
        self.reason = reason


def refusal_status(reason: str) -> str:
    """The failure code a refused row carries in the dataset: `url_refused:<reason>`."""
    return f"{URL_REFUSED_PREFIX}{reason}"


@dataclass(frozen=True)
class UrlPolicy:
    """What a fetch may do; built from the build config's `ingest` section (`IngestConfig`)."""

    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_bytes: int = 32 << 20
    deadline_s: float = 60.0  # the whole request: connect, redirects, headers and body
    timeout_s: float = 10.0  # one connect or read

    @classmethod
    def from_config(
        cls, networks: Iterable[str], max_bytes: int, deadline_s: float, timeout_s: float
    ) -> UrlPolicy:
        """Parse CIDR strings (ValueError naming the bad one)."""
        parsed = []
        for text in networks:
            try:
                parsed.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                raise ValueError(f"{text!r} is not a network in CIDR form ({exc})") from None
        return cls(tuple(parsed), int(max_bytes), float(deadline_s), float(timeout_s))

    def to_json(self) -> dict:
        return {
            "allowed_networks": [str(n) for n in self.allowed_networks],
            "max_bytes": self.max_bytes,
            "deadline_s": self.deadline_s,
            "timeout_s": self.timeout_s,
        }

    @classmethod
    def from_json(cls, data: dict) -> UrlPolicy:
        return cls.from_config(
            data["allowed_networks"], data["max_bytes"], data["deadline_s"], data["timeout_s"]
        )


def address_kind(ip: IPAddress) -> str | None:
    """Why an address is not fetched by default ("loopback", "private"...), or None: global."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_kind(ip.ipv4_mapped)  # ::ffff:127.0.0.1 is 127.0.0.1
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    # 100.64.0.0/10 (carrier-grade NAT), 6to4/Teredo oddities: not private, not global either.
    return None if ip.is_global else "non-global"


def check_address(ip: IPAddress, policy: UrlPolicy) -> None:
    """Raise UrlRefused("address") unless `ip` is global or inside an allowed network."""
    if any(ip in net for net in policy.allowed_networks if net.version == ip.version):
        return
    kind = address_kind(ip)
    if kind is not None:
        raise UrlRefused(
            "address", f"the host is or resolves to a {kind} address (see ingest.allowed_networks)"
        )


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent


def _parse(url: str) -> _Target:
    if _BAD_CHARS.search(url):
        raise UrlRefused("syntax", "the URL holds whitespace or control characters")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise UrlRefused("scheme", f"scheme {scheme or '(none)'!r} is not http or https")
        host, port = parts.hostname, parts.port
    except ValueError:  # a bad port or bracketed host
        raise UrlRefused("syntax", "the URL cannot be parsed") from None
    if not host:
        raise UrlRefused("syntax", "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("syntax", "the URL carries credentials")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def _literal(host: str) -> IPAddress | None:
    # ip_address raises for a name, and exceptions are slow: on a list of 100M URLs with names,
    # trying only what could be an address keeps the pre-check at a few microseconds per URL.
    if not _MAYBE_ADDRESS.match(host):
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def precheck_url(url: str, policy: UrlPolicy) -> None:
    """Everything that can be refused without the network: scheme, syntax, a literal address.

    A host name is resolved and checked by `fetch`, right before it connects."""
    target = _parse(url)
    ip = _literal(target.host)
    if ip is not None:
        check_address(ip, policy)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def resolve_checked(host: str, port: int, policy: UrlPolicy, resolve: Resolver) -> list[str]:
    """The host's addresses, all checked: one refused address refuses the host (a name that
    answers with a public and a private address could be steered to either)."""
    literal = _literal(host)
    addresses = [str(literal)] if literal is not None else resolve(host, port)
    if not addresses:
        raise OSError(f"{host}: no address")
    for a in addresses:
        check_address(ipaddress.ip_address(a.split("%", 1)[0]), policy)
    return addresses


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a checked address, while Host (and TLS SNI, certificate name) stay the name."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses
        # http.client drops `sock` once a closing response owns the socket; the deadline timer
        # and the read loop still need it.
        self.pinned_sock: socket.socket | None = None

    def connect(self) -> None:
        # Each checked address in turn, as socket.create_connection does with a name's (an
        # IPv6 address first on a machine without an IPv6 route must not fail the download).
        error: OSError | None = None
        for address in self._addresses:
            try:
                self.sock = socket.create_connection((address, self.port), self.timeout)
                break
            except OSError as exc:
                error = exc
        else:
            raise error or OSError("no address to connect to")
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pinned_sock = self.sock


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443
    _tls = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self.pinned_sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)


def _remaining(end: float) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise UrlRefused("deadline", "the request ran past ingest.deadline_s")
    return left


def fetch(
    url: str,
    policy: UrlPolicy,
    headers: dict[str, str] | None = None,
    resolve: Resolver = system_resolver,
    accept: Callable[[http.client.HTTPMessage], str | None] | None = None,
) -> bytes:
    """GET `url` under `policy`: every hop checked before connecting, at most `max_bytes` read,
    all of it within `deadline_s`. `accept(headers)` may refuse the final response (returns an
    error text). Raises UrlRefused, or OSError / http.client errors for ordinary failures."""
    end = time.monotonic() + policy.deadline_s
    for _ in range(MAX_REDIRECTS + 1):
        target = _parse(url)
        addresses = resolve_checked(target.host, target.port, policy, resolve)
        cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        conn = cls(target.host, target.port, addresses, min(policy.timeout_s, _remaining(end)))
        # A server that drips bytes resets every per-read timeout; the timer ends the request.
        timer = threading.Timer(_remaining(end), _shut, (conn,))
        timer.daemon = True
        timer.start()
        try:
            conn.request(
                "GET", target.path, headers={"Accept-Encoding": "identity", **(headers or {})}
            )
            resp = conn.getresponse()
            location = resp.getheader("Location")
            if resp.status in REDIRECT_CODES and location:
                url = urljoin(url, location.strip())
                continue
            if resp.status != 200:
                raise OSError(f"HTTP Error {resp.status}: {resp.reason}")
            if accept is not None:
                refused = accept(resp.headers)
                if refused:
                    raise OSError(refused)
            return _read_capped(resp, conn, policy, end)
        except (OSError, http.client.HTTPException):
            _remaining(end)  # a timeout or a shut socket past the deadline is the deadline
            raise
        finally:
            timer.cancel()
            conn.close()
            if conn.pinned_sock is not None:
                conn.pinned_sock.close()
    raise UrlRefused("redirect", f"more than {MAX_REDIRECTS} redirects")


def _shut(conn: _PinnedHTTPConnection) -> None:
    sock = conn.pinned_sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read_capped(resp, conn: _PinnedHTTPConnection, policy: UrlPolicy, end: float) -> bytes:
    length = resp.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise UrlRefused("size", f"Content-Length is over ingest.max_bytes ({policy.max_bytes})")
    parts, total = [], 0
    while True:
        left = _remaining(end)
        if conn.pinned_sock is not None:
            conn.pinned_sock.settimeout(min(policy.timeout_s, left))
        chunk = resp.read1(_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > policy.max_bytes:
            raise UrlRefused("size", f"the body is over ingest.max_bytes ({policy.max_bytes})")
        parts.append(chunk)
    _remaining(end)  # EOF forced by the deadline timer is not a whole body
    return b"".join(parts)
