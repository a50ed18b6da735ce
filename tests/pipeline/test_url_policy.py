"""The ingest URL policy (pipeline/url_policy.py): what is refused, and that a refused address is
never connected to. Every server here listens on 127.0.0.x; nothing else is ever connected to
(addresses outside 127.0.0.0/8 appear only in checks that refuse them before any connection)."""

from __future__ import annotations

import ipaddress

import pytest

from pipeline.url_policy import (
    UrlPolicy,
    UrlRefused,
    address_kind,
    fetch,
    precheck_url,
    refusal_status,
)
from shards import schema as S
from tests.pipeline.loopback_servers import counting_server, route_server

LOCAL = UrlPolicy.from_config(["127.0.0.1/32"], max_bytes=1 << 20, deadline_s=5, timeout_s=5)
STRICT = UrlPolicy()


def _reason(fn, *args, **kwargs) -> str:
    with pytest.raises(UrlRefused) as info:
        fn(*args, **kwargs)
    return info.value.reason


@pytest.mark.parametrize(
    "url, reason",
    [
        ("file:///etc/passwd", "scheme"),
        ("FILE:///etc/passwd", "scheme"),
        ("ftp://127.0.0.1/x.jpg", "scheme"),
        ("gopher://127.0.0.1:70/_x", "scheme"),
        ("data:image/png;base64,AAAA", "scheme"),
        ("/etc/passwd", "scheme"),
        ("images/0001.jpg", "scheme"),
        ("http:///x.jpg", "syntax"),
        ("http://127.0.0.1:99999/x.jpg", "syntax"),
        ("http://user:pw@example.com/x.jpg", "syntax"),
        ("http://exa mple.com/x.jpg", "syntax"),
        ("http://example.com/x\n.jpg", "syntax"),
        ("http://127.0.0.1/x.jpg", "address"),
        ("http://127.0.0.2:8080/x.jpg", "address"),
        ("http://10.0.0.1/x.jpg", "address"),
        ("http://192.168.1.1/x.jpg", "address"),
        ("http://172.16.0.1/x.jpg", "address"),
        ("http://169.254.169.254/latest/meta-data/", "address"),
        ("http://0.0.0.0/x.jpg", "address"),
        ("http://224.0.0.1/x.jpg", "address"),
        ("http://240.0.0.1/x.jpg", "address"),
        ("http://100.64.0.1/x.jpg", "address"),
        ("http://[::1]/x.jpg", "address"),
        ("http://[::ffff:127.0.0.1]/x.jpg", "address"),
        ("http://[fe80::1]/x.jpg", "address"),
        ("http://[fc00::1]/x.jpg", "address"),
    ],
)
def test_precheck_refuses_without_the_network(url, reason):
    assert _reason(precheck_url, url, STRICT) == reason
    assert refusal_status(reason) == f"url_refused:{reason}"


def test_precheck_passes_names_and_global_addresses_and_allowed_networks():
    for url in (
        "http://example.com/a.jpg",
        "HTTPS://example.com:8443/a.jpg?x=1",
        "http://8.8.8.8/",
    ):
        precheck_url(url, STRICT)  # names are resolved by fetch, right before connecting
    precheck_url("http://127.0.0.1:8000/a.jpg", LOCAL)
    assert _reason(precheck_url, "http://127.0.0.2:8000/a.jpg", LOCAL) == "address"


def test_address_kinds():
    kinds = {
        "127.0.0.1": "loopback",
        "10.1.2.3": "private",
        "169.254.1.1": "link-local",
        "224.0.0.5": "multicast",
        "0.0.0.0": "unspecified",
        "::ffff:10.0.0.1": "private",
        "93.184.216.34": None,
    }
    for text, kind in kinds.items():
        assert address_kind(ipaddress.ip_address(text)) == kind, text


def test_bad_allowed_network_is_named():
    with pytest.raises(ValueError, match="'127.0.0.1/33' is not a network"):
        UrlPolicy.from_config(["127.0.0.1/33"], 1, 1, 1)


def test_fetch_reads_an_allowed_address():
    routes = {"/a.jpg": ("bytes", b"jpeg bytes")}
    with route_server(routes) as base:
        assert fetch(f"{base}/a.jpg", LOCAL) == b"jpeg bytes"
        with pytest.raises(OSError, match="HTTP Error 404"):
            fetch(f"{base}/nope.jpg", LOCAL)


def test_a_refused_address_is_never_connected_to():
    with counting_server("127.0.0.2") as target:
        assert _reason(fetch, f"{target.url}/x.jpg", LOCAL) == "address"
        # A name resolving to the refused address: refused after resolving, before connecting.
        resolve = lambda host, port: ["127.0.0.2"]  # noqa: E731
        url = f"http://images.example:{target.port}/x.jpg"
        assert _reason(fetch, url, LOCAL, resolve=resolve) == "address"
        # One refused address among several refuses the name (the answer could be steered).
        both = lambda host, port: ["127.0.0.1", "127.0.0.2"]  # noqa: E731
        assert _reason(fetch, url, LOCAL, resolve=both) == "address"
        # A numeric host ipaddress does not parse passes the pre-check as a name; the system
        # resolver reads 2130706434 as 127.0.0.2, which the fetch then refuses.
        numeric = f"http://2130706434:{target.port}/x.jpg"
        precheck_url(numeric, LOCAL)
        assert _reason(fetch, numeric, LOCAL) == "address"
        assert target.count == 0


def test_a_redirect_to_a_refused_address_is_not_followed():
    with counting_server("127.0.0.2") as target:
        routes = {
            "/hop": ("redirect", f"{target.url}/secret"),
            "/file": ("redirect", "file:///etc/passwd"),
            "/ok": ("redirect", "/a.jpg"),
            "/a.jpg": ("bytes", b"fine"),
        }
        with route_server(routes) as base:
            assert _reason(fetch, f"{base}/hop", LOCAL) == "address"
            assert _reason(fetch, f"{base}/file", LOCAL) == "scheme"
            assert fetch(f"{base}/ok", LOCAL) == b"fine"
        assert target.count == 0


def test_redirect_loops_end():
    routes: dict = {}
    with route_server(routes) as base:
        routes["/loop"] = ("redirect", f"{base}/loop")
        assert _reason(fetch, f"{base}/loop", LOCAL) == "redirect"


def test_size_cap_by_header_and_by_body():
    small = UrlPolicy.from_config(["127.0.0.1/32"], max_bytes=1000, deadline_s=5, timeout_s=5)
    routes = {
        "/big": ("bytes", b"x" * 1001),
        "/endless": ("endless", 10_000),  # would be 655 MB; stopped after the first chunk
        "/fits": ("bytes", b"x" * 1000),
    }
    with route_server(routes) as base:
        assert _reason(fetch, f"{base}/big", small) == "size"
        assert _reason(fetch, f"{base}/endless", small) == "size"
        assert fetch(f"{base}/fits", small) == b"x" * 1000


def test_a_slow_drip_ends_at_the_deadline():
    # Each byte arrives well within the per-read timeout; only the total deadline stops it.
    policy = UrlPolicy.from_config(["127.0.0.1/32"], max_bytes=1 << 20, deadline_s=1, timeout_s=5)
    with route_server({"/drip": ("drip", 0.05)}) as base:
        assert _reason(fetch, f"{base}/drip", policy) == "deadline"


def test_refusal_text_maps_to_the_status():
    assert S.url_refusal("url_refused:address: the host ...") == "url_refused:address"
    assert S.url_refusal("HTTP Error 404: Not Found") is None
    assert S.url_refusal(None) is None


def test_fetch_tries_each_checked_address():
    # Nothing listens on 127.0.0.3 (connection refused at once); the server is on 127.0.0.1.
    policy = UrlPolicy.from_config(["127.0.0.0/8"], max_bytes=1 << 20, deadline_s=5, timeout_s=5)
    resolve = lambda host, port: ["127.0.0.3", "127.0.0.1"]  # noqa: E731
    with route_server({"/a.jpg": ("bytes", b"second address")}) as base:
        port = base.rsplit(":", 1)[1]
        assert fetch(f"http://images.example:{port}/a.jpg", policy, resolve=resolve) == (
            b"second address"
        )
