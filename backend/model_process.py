"""The model process: the policy and its continuous decoding loop, apart from the HTTP server.

Python runs one thread at a time in a process. With decoding on a thread beside the HTTP server,
every step of a small model (mostly Python: module calls, sampling, bookkeeping) waited for the
event loop's parsing and answering, and the other way round; in a process of its own each has a
core. The HTTP process (backend/batching.py) sends requests and control calls over a pipe
(backend/model_messages.py) and never holds more requests here than the batch has room for, so
requests whose client went away are dropped there, before they cost a prefill.

One loop does everything here, in order: read what has arrived, land an adapter whose files are
read, let waiting requests join, run one step. An adapter swap therefore lands between two steps,
never inside one; reading its files runs on a helper thread so the loop does not wait for the disk.
"""

from __future__ import annotations

import logging
import signal
import time
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from backend.engine import EngineRequest, Generation
from backend.model_messages import (
    Done,
    Failed,
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
from core.config import ModelConfig

log = logging.getLogger(__name__)

# How long an idle loop sleeps at most while an adapter's files are being read.
_PREPARE_POLL_S = 0.005


@dataclass(frozen=True)
class LoopConfig:
    model_name: str
    model: ModelConfig
    # As BackendConfig's batch_window_ms, max_batch, join_min and join_wait_steps.
    window_ms: float = 5.0
    max_batch: int = 16
    join_min: int = 4
    join_wait_steps: int = 3


def serve(conn: Connection, config: LoopConfig) -> None:
    """The model process's entry point: load the model, say ready, run the loop until told to stop
    or until the HTTP process is gone."""
    # Ctrl-C in a terminal reaches the whole process group; the HTTP process decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        loop = ModelLoop(conn, config)
    except Exception:
        conn.send(LoadFailed(traceback.format_exc()))
        return
    conn.send(Ready(loop.policy.info()))
    try:
        loop.run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the HTTP process is gone
    finally:
        loop.close()


class ModelLoop:
    def __init__(self, conn: Connection, config: LoopConfig) -> None:
        from backend.decoding import Decoding
        from backend.serving import Policy, use_cpu_threads

        self.conn = conn
        self.config = config
        model = config.model
        self.policy = Policy(
            config.model_name,
            fim=model.fim,
            temperature=model.temperature,
            max_new_tokens=model.max_new_tokens,
            context_tokens=model.context_tokens,
            device=model.device,
        )
        if self.policy.device.type == "cpu":
            log.info("model process: %d CPU threads", use_cpu_threads(model.threads))
        self.decoding = Decoding(self.policy)
        self.inbox: deque[tuple[int, EngineRequest]] = deque()
        self.received: dict[int, float] = {}  # when each waiting request arrived, for its first token
        self.window_ends = 0.0  # when an idle loop stops waiting for company and starts
        self.waited = 0  # steps run while a request waited to join
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-reader")
        self.installs: list[tuple[int, Future[Any]]] = []

    def run(self) -> None:
        while self.receive():
            self.land_installs()
            if self.should_join():
                self.join()
            elif self.decoding.size:
                self.step()

    def receive(self) -> bool:
        """Take in what has arrived; wait for something when there is nothing to do. False: stop."""
        timeout = self._timeout()
        while self.conn.poll(timeout):
            if not self.handle(self.conn.recv()):
                return False
            timeout = self._timeout()
        return True

    def _timeout(self) -> float | None:
        """How long to wait for messages before doing work: 0 with work to do, None (for ever)
        with none, the rest of the window while an idle loop collects its first batch."""
        if self.decoding.size or any(future.done() for _, future in self.installs):
            return 0
        if self.inbox:
            full = len(self.inbox) >= self.config.max_batch
            return 0 if full else max(0.0, self.window_ends - time.monotonic())
        return _PREPARE_POLL_S if self.installs else None

    def handle(self, message: ToModel) -> bool:
        """Act on one message; False: stop."""
        match message:
            case Job(key, request):
                if not self.inbox and not self.decoding.size:
                    self.window_ends = time.monotonic() + self.config.window_ms / 1000
                self.inbox.append((key, request))
                self.received[key] = time.monotonic()
            case Install(call, version, path):
                if self.policy.keep(version):
                    self.reply(call)
                else:
                    from backend.serving import prepare_adapter  # torch: the model process only

                    self.installs.append((call, self.reader.submit(prepare_adapter, version, Path(path))))
            case Remove(call, version):
                self.policy.remove(version)
                self.prune()
                self.reply(call)
            case Stop():
                return False
            case _:
                log.error("unknown message %r", message)
        return True

    def land_installs(self) -> None:
        """Install the adapters whose files are read, in the order they were asked for."""
        while self.installs and self.installs[0][1].done():
            call, future = self.installs.pop(0)
            if (error := future.exception()) is not None:
                self.refuse(call, error)
            else:
                self.call(call, self.policy.install, future.result())

    def should_join(self) -> bool:
        if not self.inbox:
            return False
        room = self.config.max_batch - self.decoding.size if self.decoding.can_join() else 0
        if not room:
            return False
        if not self.decoding.size:
            return True
        waiting = min(len(self.inbox), room)
        return waiting >= min(room, self.config.join_min) or self.waited >= self.config.join_wait_steps

    def join(self) -> None:
        room = self.config.max_batch - self.decoding.size
        joining = [self.inbox.popleft() for _ in range(min(room, len(self.inbox)))]
        self.waited = 0
        received = {key: self.received.pop(key) for key, _ in joining}
        try:
            self.deliver(self.decoding.join(joining, received))
        except Exception as error:  # a failed prefill fails its requests, not the loop
            self.fail(self.decoding.abandon() + [key for key, _ in joining], error)
        self.prune()

    def step(self) -> None:
        try:
            self.deliver(self.decoding.step())
        except Exception as error:
            self.fail(self.decoding.abandon(), error)
        self.waited = self.waited + 1 if self.inbox else 0
        self.prune()

    def prune(self) -> None:
        """Free the adapters being removed that neither a running row nor a waiting request uses
        (a request sent before the removal, whose caller gave up on it, still gets its adapter)."""
        self.policy.prune(waiting={request.version for _, request in self.inbox})

    def deliver(self, done: list[tuple[Any, Generation]]) -> None:
        # As rows complete: no editor waits for a longer completion.
        if done:
            self.conn.send(Done(done))

    def fail(self, keys: list[Any], error: Exception) -> None:
        log.error("decoding %d requests failed", len(keys), exc_info=error)
        self.conn.send(Failed(keys, f"{type(error).__name__}: {error}"))

    def call(self, call: int, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as error:
            self.refuse(call, error)
        else:
            self.reply(call)

    def reply(self, call: int) -> None:
        self.conn.send(Reply(call))

    def refuse(self, call: int, error: BaseException) -> None:
        self.conn.send(Refused(call, type(error).__name__, str(error)))

    def close(self) -> None:
        self.reader.shutdown(wait=False, cancel_futures=True)
