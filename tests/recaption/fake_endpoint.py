"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for the openai engine tests.

`FakeEndpoint(plan)` serves `POST /v1/chat/completions` on a free port. `plan(seed, attempt)`
says what to answer to the `attempt`-th request (1, 2, ...) carrying that `seed` (every image has
its own seed, `recaption.engine.key_seed`): a completion (`None`), `("status", code, headers)`,
`("bad_json",)`, `("sleep", seconds)` (then a completion), or `("drop",)` (close the connection
unanswered). Every request is recorded (body, headers); `max_in_flight` is the most requests it
held at once, and with `hold_until` requests wait until that many are in flight (or 5 s pass).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def completion_text(seed: int) -> str:
    return f"A red circle on a plain background, number {seed}."


class FakeEndpoint:
    def __init__(self, plan=None, hold_until: int = 0) -> None:
        self.plan = plan or (lambda seed, attempt: None)
        self.hold_until = hold_until
        self.requests: list[dict[str, Any]] = []
        self.attempts: Counter[int] = Counter()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Condition()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def do_POST(self) -> None:
                endpoint.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        with self.lock:
            self.requests.append({"path": h.path, "body": body, "headers": dict(h.headers)})
            self.attempts[body["seed"]] += 1
            attempt = self.attempts[body["seed"]]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.lock.notify_all()
            if self.hold_until:
                self.lock.wait_for(lambda: self.in_flight >= self.hold_until, timeout=5)
        try:
            self.answer(h, body, self.plan(body["seed"], attempt))
        finally:
            with self.lock:
                self.in_flight -= 1

    def answer(self, h: BaseHTTPRequestHandler, body: dict[str, Any], action) -> None:
        if action is not None and action[0] == "drop":
            h.close_connection = True
            h.connection.shutdown(2)  # no status line: the client sees the connection end
            return
        if action is not None and action[0] == "sleep":
            time.sleep(action[1])
            action = None
        status, headers, payload = 200, {}, b""
        if action is None:
            payload = json.dumps(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": completion_text(body["seed"]),
                            },
                            "finish_reason": "stop",
                        }
                    ],
                    # Distinct counts per request, so that sums are checked, not guessed.
                    "usage": {
                        "prompt_tokens": 100 + body["seed"] % 7,
                        "completion_tokens": 10 + body["seed"] % 5,
                        "total_tokens": 110 + body["seed"] % 7 + body["seed"] % 5,
                    },
                }
            ).encode()
        elif action[0] == "bad_json":
            payload = b"<html>upstream says hello</html>"
        elif action[0] == "status":
            status, headers = action[1], action[2]
            payload = json.dumps({"error": {"message": f"status {status}"}}).encode()
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
