"""A real HTTP server on loopback, for tests that put something of their own where the backend is
(a recording backend, a proxy, a confused gateway). Each test says only how to answer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (status, body, content type); None closes the connection without an answer.
Answer = tuple[int, bytes, str] | None
Answerer = Callable[[str, str, Mapping[str, str], bytes], Answer]


class LoopbackHTTP:
    """Serves every GET and POST through `answer(method, path, headers, body)` on a thread.

    `keep_alive` speaks HTTP/1.1 with Nagle off, as a real backend does: without it a client's
    second request on the connection waits out delayed ACKs (40 ms)."""

    def __init__(self, answer: Answerer, *, keep_alive: bool = False) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                if keep_alive:
                    self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                self.reply(answer("GET", self.path, self.headers, b""))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.reply(answer("POST", self.path, self.headers, body))

            def reply(self, answered: Answer) -> None:
                if answered is None:
                    self.close_connection = True
                    return
                status, data, content_type = answered
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def json_answer(data: bytes, status: int = 200) -> Answer:
    return status, data, "application/json"


NOT_FOUND: Answer = (404, b'{"detail": "Not Found"}', "application/json")
