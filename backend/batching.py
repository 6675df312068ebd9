"""Batching: requests share one continuous decoding loop (backend/decoding.py).

An idle loop starts with the requests arriving within a short window of the first; after that,
requests join between steps while there is room, a few at a time: each join is a prefill forward
pass, which costs a small model about the same for one request as for four. All model work
(steps, installing adapters, re-routing) runs on one worker thread, in order, so a hot swap lands
between two steps and never inside one. Adapter files are read off that thread, so the worker
only pays for copying weights in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.decoding import Decoding
from backend.serving import Policy, Request, Sample, prepare_adapter

log = logging.getLogger(__name__)

Gone = Callable[[], Awaitable[bool]]


@dataclass
class _Job:
    request: Request
    future: asyncio.Future[Sample]
    gone: Gone | None


class PolicyWorker:
    def __init__(
        self,
        policy: Policy,
        window_ms: float = 5.0,
        max_batch: int = 16,
        join_min: int = 4,
        join_wait_steps: int = 3,
    ) -> None:
        self.policy = policy
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self.join_min = join_min
        self.join_wait_steps = join_wait_steps
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._driver: asyncio.Task[None] | None = None
        # Read by the worker thread between steps: plain ints, so no lock is needed.
        self._controls_waiting = 0
        self.batches = 0
        self.dropped = 0

    def start(self) -> None:
        self._driver = asyncio.create_task(self._drive(), name="decoding-driver")

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run `fn` on the model's thread between two decoding steps."""
        self._controls_waiting += 1
        try:
            return await self._on_model_thread(fn, *args)
        finally:
            self._controls_waiting -= 1

    async def complete(self, request: Request, gone: Gone | None = None) -> Sample:
        future: asyncio.Future[Sample] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(request, future, gone))
        return await future

    async def install(self, version: str, path: Path) -> None:
        prepared = await asyncio.to_thread(prepare_adapter, version, path)
        await self.run(self.policy.install, prepared)

    async def route(self, live: str, canary: str | None, share: float) -> None:
        await self.run(self.policy.route, live, canary, share)

    async def _on_model_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _drive(self) -> None:
        """Feed the decoding loop: new requests join between steps while there is room; the loop
        hands the thread back whenever a request waits to join or an adapter swap waits to land."""
        loop = asyncio.get_running_loop()
        decoding = Decoding(self.policy)

        def deliver(done: list[tuple[_Job, Sample]]) -> None:
            # From the worker thread as rows complete: no editor waits for a longer completion.
            for job, sample in done:
                loop.call_soon_threadsafe(_resolve, job.future, sample)

        while True:
            if decoding.size == 0:
                jobs = await self._window()
                self.batches += 1
            else:
                jobs = []
                room = self._room(decoding)
                while len(jobs) < room and not self._queue.empty():
                    jobs.append(self._queue.get_nowait())
            live = [job for job in jobs if not job.future.done() and not await _gone(job)]
            self.dropped += len(jobs) - len(live)
            try:
                await self._on_model_thread(self._decode, decoding, live, deliver)
            except Exception as error:  # a failed step fails its requests, not the driver
                log.exception("decoding %d requests failed", decoding.size + len(live))
                failed = decoding.abandon() + live
                for job in failed:
                    if not job.future.done():
                        loop.call_soon_threadsafe(job.future.set_exception, error)

    def _decode(
        self,
        decoding: Decoding,
        joining: list[_Job],
        deliver: Callable[[list[tuple[_Job, Sample]]], None],
    ) -> None:
        """On the worker thread: let `joining` in, then step until the batch is empty, an adapter
        swap waits, or enough requests wait to join (or one has waited long enough)."""
        if joining:
            deliver(decoding.join([(job, job.request) for job in joining]))
        waited = 0  # steps run while a request waited to join
        while decoding.size:
            deliver(decoding.step())
            if self._controls_waiting:
                break
            room = self._room(decoding)
            waiting = min(self._queue.qsize(), room)
            waited = waited + 1 if waiting else 0
            if waiting and (waiting >= min(room, self.join_min) or waited >= self.join_wait_steps):
                break
        self.policy.prune()

    def _room(self, decoding: Decoding) -> int:
        """How many requests may join the running loop now."""
        return self.max_batch - decoding.size if decoding.can_join() else 0

    async def _window(self) -> list[_Job]:
        """The first request, and those arriving within the collection window after it."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch:
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), deadline - loop.time()))
            except TimeoutError:
                break
        return batch

    async def close(self) -> None:
        if self._driver is not None:
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _resolve(future: asyncio.Future[Sample], sample: Sample) -> None:
    if not future.done():
        future.set_result(sample)


async def _gone(job: _Job) -> bool:
    """True when the client has hung up: its request is dropped before the batch runs."""
    if job.gone is None:
        return False
    try:
        return await asyncio.wait_for(job.gone(), timeout=0.05)
    except Exception:
        return False
