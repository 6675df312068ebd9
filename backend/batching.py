"""The in-process engine (backend/engine.py): the HTTP process's handle on the model process
(backend/model_process.py).

Requests wait here, in the event loop, until the batch has room: only then is a request whose
client has gone dropped or sent on, so a queue that backs up costs no prefill for editors that
stopped waiting. Replies come back over the pipe and resolve their futures from the event loop's
reader callback. If the model process dies, its requests fail, and a new one is started with the
adapters that were installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from backend.engine import ClientGone, EngineInfo, EngineRequest, EngineUnavailable, Generation, Gone
from backend.model_messages import (
    Done,
    Failed,
    FromModel,
    Install,
    Job,
    LoadFailed,
    Ready,
    Refused,
    Remove,
    Reply,
    Stop,
    ToModel,
)
from backend.model_process import LoopConfig, serve

log = logging.getLogger(__name__)


class ModelProcessError(EngineUnavailable):
    """The model process could not load its model, or exited."""


@dataclass
class _Job:
    request: EngineRequest
    future: asyncio.Future[Generation]
    gone: Gone | None
    # time.monotonic() when asked, and when sent to the model process: the wait here, which the
    # model process's time to first token does not see.
    asked: float = field(default_factory=time.monotonic)
    sent: float = 0.0


class InProcessEngine:
    # What the model process serves with; set once it is ready.
    info: EngineInfo

    def __init__(self, config: LoopConfig) -> None:
        self.config = config
        self.batches = 0  # decoding loops started from idle
        self.dropped = 0  # requests dropped because their client had gone
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._slots = asyncio.Semaphore(config.max_batch)
        self._running: dict[int, _Job] = {}
        self._calls: dict[int, asyncio.Future[None]] = {}
        self._keys = itertools.count()
        # Control calls may go once the model process is up; requests once it serves what the
        # last one served (a restarted process re-installs its adapters first).
        self._connected = asyncio.Event()
        self._ready = asyncio.Event()
        self._started: asyncio.Future[EngineInfo] | None = None
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._driver: asyncio.Task[None] | None = None
        self._restart: asyncio.Task[None] | None = None
        self._adapters: dict[str, Path] = {}
        self._closing = False
        # Why nothing can be served (a model process that could not be restarted); None: all well.
        self._failure: Exception | None = None

    async def start(self) -> EngineInfo:
        """Start the model process and wait until its model is loaded."""
        await self._spawn()
        self._ready.set()
        self._driver = asyncio.create_task(self._drive(), name="decoding-driver")
        return self.info

    async def complete(self, request: EngineRequest, gone: Gone | None = None) -> Generation:
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(request, future, gone))
        return await future

    async def install(self, version: str, path: Path) -> None:
        """Install an adapter (a no-op when it is installed)."""
        self._adapters[version] = path
        await self._call(lambda call: Install(call, version, str(path)))

    async def remove(self, version: str) -> None:
        """Free an adapter once no row uses it; a restarted model process does not install it."""
        self._adapters.pop(version, None)
        with contextlib.suppress(ModelProcessError):  # the process that had it is gone
            await self._call(lambda call: Remove(call, version))

    @property
    def failure(self) -> Exception | None:
        """Why nothing can be served (a model process that could not be restarted); None if all is well."""
        return self._failure

    async def close(self) -> None:
        self._closing = True
        for task in (self._driver, self._restart):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._conn is not None:
            with contextlib.suppress(OSError):  # already gone
                self._conn.send(Stop())
        await asyncio.to_thread(self._reap)
        self._disconnect()
        self._lost(ModelProcessError("the backend is shutting down"))

    # The model process's life.

    async def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded process
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve, args=(theirs, self.config), name="flywheel-model", daemon=True
        )
        await asyncio.to_thread(process.start)
        theirs.close()
        loop = asyncio.get_running_loop()
        self._process, self._conn = process, ours
        self._started = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        self.info = await self._started
        log.info("model process %d ready", process.pid)
        self._connected.set()

    def _reap(self) -> None:
        if self._process is None:
            return
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _on_readable(self) -> None:
        assert self._conn is not None
        try:
            while self._conn.poll():
                self._dispatch(self._conn.recv())
        except (EOFError, OSError):
            was_serving = self._ready.is_set()
            self._disconnect()
            self._lost(ModelProcessError("the model process exited"))
            if was_serving and not self._closing:
                self._restart = asyncio.create_task(self._respawn(), name="model-restart")

    def _dispatch(self, message: FromModel) -> None:
        match message:
            case Done(generations):
                for key, generation in generations:
                    generation = self._queued_too(key, generation)
                    self._finish(key, lambda future, generation=generation: future.set_result(generation))
            case Failed(keys, text):
                for key in keys:
                    self._finish(key, lambda future: future.set_exception(RuntimeError(text)))
            case Reply(call):
                future = self._calls.pop(call)
                if not future.done():  # its caller may have been cancelled meanwhile
                    future.set_result(None)
            case Refused(call, error_type, text):
                future = self._calls.pop(call)
                if not future.done():
                    future.set_exception((ValueError if error_type == "ValueError" else RuntimeError)(text))
            case Ready(info):
                assert self._started is not None
                self._started.set_result(info)
            case LoadFailed(trace):
                assert self._started is not None
                name = self.config.model_name
                self._started.set_exception(ModelProcessError(f"the model {name} failed to load:\n{trace}"))

    def _queued_too(self, key: int, generation: Generation) -> Generation:
        """The generation's time to first token counted from when it was asked for here."""
        job = self._running.get(key)
        if job is None or generation.first_token_s is None:
            return generation
        return dataclasses.replace(generation, first_token_s=generation.first_token_s + job.sent - job.asked)

    @property
    def waiting(self) -> int:
        """Requests waiting for a place in the batch (/metrics' queue depth)."""
        return self._queue.qsize()

    def _finish(self, key: int, settle: Callable[[asyncio.Future[Generation]], None]) -> None:
        job = self._running.pop(key)
        self._slots.release()
        if not job.future.done():  # its handler may have been cancelled meanwhile
            settle(job.future)

    def _disconnect(self) -> None:
        self._connected.clear()
        self._ready.clear()
        if self._conn is not None:
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None

    def _lost(self, error: Exception) -> None:
        """Fail what the model process held: its requests and control calls."""
        for key in list(self._running):
            self._finish(key, lambda future: future.set_exception(error))
        for future in self._calls.values():
            if not future.done():
                future.set_exception(error)
        self._calls.clear()
        if self._started is not None and not self._started.done():
            self._started.set_exception(error)

    async def _respawn(self) -> None:
        """A new model process with the adapters the last one had; if that fails, every request
        from then on fails with the reason."""
        await asyncio.to_thread(self._reap)
        code = self._process.exitcode if self._process else None
        log.error("the model process exited (code %s); starting a new one", code)
        try:
            await self._spawn()
            for version, path in list(self._adapters.items()):
                await self.install(version, path)
        except Exception as error:
            log.exception("the model process could not be restarted")
            self._failure = error
            self._connected.set()
        self._ready.set()

    # Requests.

    async def _drive(self) -> None:
        """Send queued requests on while the batch has room, dropping those whose client has gone."""
        while True:
            job = await self._queue.get()
            await self._slots.acquire()
            await self._ready.wait()
            gone = self._failure is None and (job.future.done() or await _gone(job))
            # Asking after the client yields, and the model process may die meanwhile: then the job
            # waits for the next one (sent to a dead one, it would be lost and the driver with it).
            await self._ready.wait()
            if self._failure is not None:
                if not job.future.done():
                    job.future.set_exception(self._failure)
                self._slots.release()
                continue
            if gone or job.future.done():
                self.dropped += 1
                self._slots.release()
                if not job.future.done():  # its caller learns it was dropped, and lets go of its version
                    job.future.set_exception(ClientGone("the client has gone"))
                continue
            key = next(self._keys)
            if not self._running:
                self.batches += 1
            self._running[key] = job
            job.sent = time.monotonic()
            self._send(Job(key, job.request))

    async def _call(self, message: Callable[[int], ToModel]) -> None:
        """Send the control call `message` makes of a new call number; return once it is done."""
        await self._connected.wait()
        if self._failure is not None:
            raise self._failure
        call = next(self._keys)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._calls[call] = future
        self._send(message(call))
        await future

    def _send(self, message: ToModel) -> None:
        assert self._conn is not None
        with contextlib.suppress(OSError):  # the process is gone: the reader fails what it held
            self._conn.send(message)


async def _gone(job: _Job) -> bool:
    """True when the client has hung up: its request is dropped before the batch runs."""
    if job.gone is None:
        return False
    try:
        return await asyncio.wait_for(job.gone(), timeout=0.05)
    except Exception:
        return False
