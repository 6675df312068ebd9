"""Dynamic batching: requests arriving within a short window share one decoding loop.

All model work (batches, installing adapters, re-routing) runs on one worker thread, in order, so
a hot swap lands between two batches and never inside one. Adapter files are read off that thread,
so the worker only pays for copying weights in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.serving import Policy, Request, Sample, prepare_adapter

log = logging.getLogger(__name__)

Gone = Callable[[], Awaitable[bool]]


@dataclass
class _Job:
    request: Request
    future: asyncio.Future[Sample]
    gone: Gone | None


class PolicyWorker:
    def __init__(self, policy: Policy, window_ms: float = 5.0, max_batch: int = 16) -> None:
        self.policy = policy
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._collector: asyncio.Task[None] | None = None
        self.batches = 0
        self.dropped = 0

    def start(self) -> None:
        self._collector = asyncio.create_task(self._collect(), name="batch-collector")

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def complete(self, request: Request, gone: Gone | None = None) -> Sample:
        future: asyncio.Future[Sample] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(request, future, gone))
        return await future

    async def install(self, version: str, path: Path) -> None:
        prepared = await asyncio.to_thread(prepare_adapter, version, path)
        await self.run(self.policy.install, prepared)

    async def route(self, live: str, canary: str | None, share: float) -> None:
        await self.run(self.policy.route, live, canary, share)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), deadline - loop.time()))
                except TimeoutError:
                    break
            jobs = [job for job in batch if not job.future.done() and not await _gone(job)]
            self.dropped += len(batch) - len(jobs)
            if not jobs:
                continue

            def deliver(index: int, sample: Sample, jobs: list[_Job] = jobs) -> None:
                # From the worker thread, as each row completes: its editor need not wait for the
                # batch's longest completion.
                loop.call_soon_threadsafe(_resolve, jobs[index].future, sample)

            try:
                samples = await self.run(self.policy.complete_batch, [job.request for job in jobs], deliver)
            except Exception as error:  # one bad batch fails its requests, not the collector
                log.exception("batch of %d failed", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            self.batches += 1
            for job, sample in zip(jobs, samples, strict=True):
                _resolve(job.future, sample)

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
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
