"""A loopback TCP relay between the trainer and the backend that sees the trainer's requests go by
and can SIGKILL it at an exact point of its conversation with the backend.

The trainer waits for each answer before it goes on, so the moment a request reaches the relay is a
precise point of its cycle: "status:uploading" (it announced the upload and is about to save the
candidate), "upload:received" (the whole upload is at the relay, none of it at the backend). The
upload gives three more: "upload:partial" (the backend got the head and half the body when the
trainer died), "upload:sent" (the backend got all of it and is taking it in) and "upload:answer"
(the backend has answered, the answer never reaches the trainer); "upload:delivered" kills it as
soon as the answer is handed over. Everything else goes through untouched, byte for byte.

Requests are read whole (head and Content-Length body) before they are passed on; answers are
streamed. HTTP/1.1 without pipelining, as httpx speaks it: on a connection, the first bytes back
after the upload went out are the upload's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Points of the trainer's conversation the relay can kill it at, in the order a cycle reaches them.
UPLOAD_POINTS = ("upload:received", "upload:partial", "upload:sent", "upload:answer", "upload:delivered")
STATUS_PREFIX = "status:"


@dataclass
class _Connection:
    # The upload went to the backend and its answer has not come back yet.
    awaiting_upload_answer: bool = False


@dataclass
class Tap:
    """The relay: `url` for the trainer, forwarding to `upstream` (host, port)."""

    upstream: tuple[str, int]
    # Moments seen, in order: (monotonic time, point).
    seen: list[tuple[float, str]] = field(default_factory=list)
    url: str = ""
    _armed: str | None = None
    _kill: Callable[[], None] | None = None
    _hit_at: float | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Tap:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="fault-tap", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop, server = self._loop, self._server

        async def close() -> None:
            if server is not None:
                server.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def arm(self, point: str | None, kill: Callable[[], None] | None) -> None:
        """Kill with `kill` when the conversation reaches `point` (None: watch only); forgets what
        was seen before."""
        with self._lock:
            self._armed, self._kill, self._hit_at = point, kill, None
            self.seen = []

    def first(self, point: str) -> float | None:
        with self._lock:
            return next((at for at, name in self.seen if name == point), None)

    @property
    def hit_at(self) -> float | None:
        return self._hit_at

    def _reach(self, point: str) -> bool:
        """Records `point`; True when the trainer was killed here (and so must hear nothing more)."""
        with self._lock:
            self.seen.append((time.monotonic(), point))
            hit = point == self._armed and self._kill is not None and self._hit_at is None
            kill = self._kill
        if hit and kill is not None:
            kill()
            self._hit_at = time.monotonic()
        return hit

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        state = _Connection()
        answers = asyncio.create_task(self._answers(up_reader, writer, state))
        try:
            await self._requests(reader, up_writer, state)
        finally:
            # The trainer hung up or died: the backend sees its connection close, as it would.
            up_writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(answers, 30)
            writer.close()

    async def _requests(
        self, reader: asyncio.StreamReader, up: asyncio.StreamWriter, state: _Connection
    ) -> None:
        while True:
            request = await _read_request(reader)
            if request is None:
                return
            head, body = request
            method, path = head.split(b" ", 2)[:2]
            point = _point(method.decode(), path.decode(), body)
            if point != "upload":
                if self._reach(point):
                    return
                up.write(head + body)
                await up.drain()
                continue
            if self._reach("upload:received"):
                return
            if self._reach("upload:partial"):
                up.write(head + body[: len(body) // 2])
                await up.drain()
                return
            state.awaiting_upload_answer = True
            up.write(head + body)
            await up.drain()
            if self._reach("upload:sent"):
                return

    async def _answers(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: _Connection
    ) -> None:
        while data := await up_reader.read(65536):
            upload_answer = state.awaiting_upload_answer
            if upload_answer:
                state.awaiting_upload_answer = False
                if self._reach("upload:answer"):
                    return
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            if upload_answer and self._reach("upload:delivered"):
                return


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head and body; None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("the tap reads Content-Length bodies only")
    try:
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return head, body


def _point(method: str, path: str, body: bytes) -> str:
    path = path.split("?", 1)[0]
    if method == "POST" and path == "/v1/checkpoints":
        return "upload"
    if method == "POST" and path.endswith("/trainer/status"):
        with contextlib.suppress(ValueError, AttributeError):
            return STATUS_PREFIX + str(json.loads(body).get("state"))
    return f"{method} {path}"
