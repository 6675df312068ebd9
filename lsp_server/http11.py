"""A small keep-alive HTTP/1.1 client on asyncio streams, with h11 doing the protocol.

The language server makes two kinds of call to one host: JSON POSTs, and a GET of its health.
httpx would do, but with its dependencies it adds about 10 MB to a process that lives inside every
editor; h11 (httpx's own HTTP/1.1 state machine) adds a fraction of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

USER_AGENT = "flywheel-lsp"
_READ_CHUNK = 65_536


class TransportError(Exception):
    """The connection failed or the answer was not HTTP."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        p = self.protocol
        request = h11.Request(method=method, target=target, headers=headers)
        self.writer.write(p.send(request) + p.send(h11.Data(data=body)) + p.send(h11.EndOfMessage()))
        await self.writer.drain()
        status, chunks = 0, []
        while True:
            event = p.next_event()
            if event is h11.NEED_DATA:
                p.receive_data(await self.reader.read(_READ_CHUNK))  # b"" tells h11 it closed
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Answer(status, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise TransportError("the server closed the connection")

    def reusable(self) -> bool:
        if self.protocol.our_state is h11.DONE and self.protocol.their_state is h11.DONE:
            self.protocol.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Http11Client:
    """Calls one base URL, keeping idle connections for the next call."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._tls else 80)
        self._path = url.path.rstrip("/")
        host = url.netloc.rsplit("@", 1)[-1]
        self._headers = [("Host", host), ("User-Agent", USER_AGENT), *headers.items()]
        self._idle: list[_Connection] = []

    async def post(self, path: str, body: bytes, content_type: str = "application/json") -> Answer:
        headers = [*self._headers, ("Content-Type", content_type), ("Content-Length", str(len(body)))]
        return await self._call("POST", path, headers, body)

    async def get(self, path: str) -> Answer:
        return await self._call("GET", path, self._headers, b"")

    async def _call(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        target = self._path + path
        if self._idle:
            connection = self._idle.pop()
            try:
                return await self._exchange(connection, method, target, headers, body)
            except (OSError, TransportError, h11.ProtocolError):
                pass  # the server dropped the idle connection meanwhile: once more on a new one
        return await self._exchange(await self._connect(), method, target, headers, body)

    async def _exchange(
        self,
        connection: _Connection,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> Answer:
        try:
            answer = await connection.request(method, target, headers, body)
        except h11.ProtocolError as exc:
            connection.close()
            raise TransportError(f"not an HTTP answer: {exc}") from exc
        except BaseException:
            # Failed or cancelled mid-exchange: the connection's state is unknown.
            connection.close()
            raise
        if connection.reusable():
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    async def _connect(self) -> _Connection:
        context = ssl.create_default_context() if self._tls else None
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=context)
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()
