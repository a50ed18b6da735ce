"""Small HTTP servers on 127.0.0.x for the ingest policy tests: one that counts the connections
it accepts (to show a refused address is never connected to) and one that answers by path:
images, redirects, an endless body, a slow drip."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator


class ConnectionCounter:
    """A TCP listener on `host` that counts accepted connections and closes them at once."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@contextlib.contextmanager
def counting_server(host: str = "127.0.0.2") -> Iterator[ConnectionCounter]:
    server = ConnectionCounter(host)
    try:
        yield server
    finally:
        server.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        kind, arg = self.routes.get(self.path.split("?")[0], ("missing", None))
        if kind == "bytes":
            self.send_response(200)
            self.send_header("Content-Length", str(len(arg)))
            self.end_headers()
            self.wfile.write(arg)
        elif kind == "redirect":
            self.send_response(302)
            self.send_header("Location", arg)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "endless":  # no Content-Length: the body runs until the client stops
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(arg):
                    self.wfile.write(b"\0" * 65536)
        elif kind == "drip":  # one byte every `arg` seconds, for ever
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(10_000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(arg)
        else:
            self.send_error(404)


@contextlib.contextmanager
def route_server(routes: dict, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `routes` ({path: (kind, arg)}) on http://host:PORT; yields the base URL."""
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer((host, 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
