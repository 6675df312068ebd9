"""Group commit of event batches, whichever database stores them: the batches that arrive while a
transaction runs share the next one. Each store's EventWriter (sqlite/ingest.py, postgres/ingest.py)
says how one group is committed; the queue, the hand-off and the answers are here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from core import wire

# pydantic's serializer called directly: model_dump_json's Python wrapper costs a third of the call,
# once per stored event.
_EVENT_JSON = wire.Event.__pydantic_serializer__


def event_row(event: wire.Event, received_at: float) -> tuple[Any, ...]:
    """An events row: event_id, completion_id, kind, payload, client_ts, received_at."""
    return (
        event.event_id,
        event.completion_id,
        event.kind.value,
        _EVENT_JSON.to_json(event, exclude_none=True).decode(),
        event.client_ts,
        received_at,
    )


@dataclass
class Batch:
    valid: list[tuple[int, wire.Event]]
    refused: list[wire.RefusedEvent]
    received_at: float
    done: asyncio.Future[wire.EventsResponse] = field(init=False)


class GroupCommit:
    """The queue of batches waiting for the next group; `_commit_group` stores one group."""

    def __init__(self) -> None:
        self._waiting: list[Batch] = []
        self._drainer: asyncio.Task[None] | None = None

    async def write(self, batch: Batch) -> wire.EventsResponse:
        batch.done = asyncio.get_running_loop().create_future()
        self._waiting.append(batch)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        # Shielded: a sender that hangs up does not unwrite a batch the group is committing.
        return await asyncio.shield(batch.done)

    async def flush(self) -> None:
        if self._drainer is not None:
            await self._drainer

    async def _commit_group(self, group: list[Batch]) -> list[wire.EventsResponse]:
        """Store the group's new events; each batch's response, in order."""
        raise NotImplementedError

    async def _drain(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                results = await self._commit_group(group)
            except Exception as error:  # the whole group failed: every sender hears why
                for batch in group:
                    batch.done.set_exception(error)
            else:
                for batch, result in zip(group, results, strict=True):
                    batch.done.set_result(result)
