"""A backend that answers at once, for `flywheel bench lsp`: what the language server costs is
measured against it, so the backend's own time is next to nothing.

`python -m bench.stub_backend [--port N] [--text T]` serves on loopback and prints its port on the
first line of stdout. It runs in a process of its own, so its work never shares a CPU slice with
the server's measurement loop. Every completion is the same one-line suggestion, with a new id;
every batch of events is stored whole. Standard library only: it starts in a blink.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SUGGESTION = "compute(a, b)"


class StubHandler(BaseHTTPRequestHandler):
    """`POST /v1/complete`, `POST /v1/events` and `GET /v1/model`, answered in the wire contract's shapes."""

    protocol_version = "HTTP/1.1"
    server: StubServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        # /v1/model: the language server asks which languages are served before it asks for any.
        self._send({"base_model": "stub", "live_version": "stub", "fim": "flywheel", "temperature": 0.0})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/complete":
            answer: dict[str, Any] = {
                "completion_id": f"b{next(self.server.ids)}",
                "text": self.server.text,
                "model_version": "stub",
                "token_logprobs": [-0.1],
                "latency_ms": 0.0,
            }
        else:
            answer = {"stored": len(body["events"]), "duplicates": 0, "refused": []}
        self._send(answer)

    def _send(self, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request would cost more than the answer


class StubServer(ThreadingHTTPServer):
    def __init__(self, port: int, text: str) -> None:
        super().__init__(("127.0.0.1", port), StubHandler)
        self.text = text
        self.ids = itertools.count()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stub_backend", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: any free port (the default)")
    parser.add_argument("--text", default=SUGGESTION, help="the suggestion every completion answers")
    args = parser.parse_args(argv)
    server = StubServer(args.port, args.text)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
