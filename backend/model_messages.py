"""The contract between the backend's HTTP process and its model process (backend/model_process.py).

Every message is a dataclass below, pickled over a multiprocessing pipe; each side dispatches on
its type with `match`.

HTTP process -> model process: Job, Install, Remove, Stop.
Model process -> HTTP process: Ready or LoadFailed first (nothing comes before either), then Done,
Failed, and one Reply or Refused per control call (Install, Remove), by its `call` number.

This module imports nothing heavy: the HTTP process never loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.engine import EngineInfo, EngineRequest, Generation

# HTTP process -> model process.


@dataclass(frozen=True)
class Job:
    """Decode this request; `key` names it in the Done or Failed that answers it."""

    key: int
    request: EngineRequest


@dataclass(frozen=True)
class Install:
    """Install the adapter at `path` under `version` (a no-op when it is installed)."""

    call: int
    version: str
    path: str


@dataclass(frozen=True)
class Remove:
    """Free `version` once no row uses it (a no-op when it is not installed)."""

    call: int
    version: str


@dataclass(frozen=True)
class Stop:
    """Finish now."""


# Model process -> HTTP process.


@dataclass(frozen=True)
class Ready:
    """The model is loaded."""

    info: EngineInfo


@dataclass(frozen=True)
class LoadFailed:
    """The model could not be loaded; the process ends."""

    traceback: str


@dataclass(frozen=True)
class Done:
    """Requests complete, as their rows leave the batch."""

    generations: list[tuple[int, Generation]]


@dataclass(frozen=True)
class Failed:
    """Requests whose decoding step raised."""

    keys: list[int]
    message: str


@dataclass(frozen=True)
class Reply:
    """A control call done."""

    call: int


@dataclass(frozen=True)
class Refused:
    """A control call refused: the error's type name and message."""

    call: int
    error_type: str
    message: str


ToModel = Job | Install | Remove | Stop
FromModel = Ready | LoadFailed | Done | Failed | Reply | Refused
