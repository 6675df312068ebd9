"""The contract between the backend's HTTP process and its model process (backend/model_process.py).

Every message is a dataclass below, pickled over a multiprocessing pipe; each side dispatches on
its type with `match`.

HTTP process -> model process: Job, Install, Route, Stop.
Model process -> HTTP process: Ready or LoadFailed first (nothing comes before either), then Done,
Failed, and one Reply or Refused per control call (Install, Route), by its `call` number.

This module imports nothing heavy: the HTTP process never loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Request:
    prefix: str
    suffix: str
    max_new_tokens: int | None
    user_id: str


@dataclass
class Sample:
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    token_logprobs: list[float]
    model_version: str


@dataclass(frozen=True)
class Cut:
    """A version's learned serving rules (CheckpointMetadata): where its completions end, and
    which it withholds. None: no such rule."""

    # Rows end before their first sampled token whose log-prob is below this (trainer/stopping.py).
    stop_logprob: float | None = None
    # A completion less sure than the floor of the place where the cursor stood is not shown
    # (core/confidence.py, trainer/withholding.py); a place without one shows everything.
    min_confidence: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyState:
    """What the HTTP process knows of the policy: as of the model process's last reply."""

    live: str
    canary: str | None
    canary_share: float
    temperature: float
    fim: str
    # Each installed version's learned serving rules, where it has any.
    cuts: dict[str, Cut] = field(default_factory=dict)


# HTTP process -> model process.


@dataclass(frozen=True)
class Job:
    """Decode this request; `key` names it in the Done or Failed that answers it."""

    key: int
    request: Request


@dataclass(frozen=True)
class Install:
    """Install the adapter at `path` under `version` (a no-op when it is installed)."""

    call: int
    version: str
    path: str


@dataclass(frozen=True)
class Route:
    """Serve `live`, and `canary` to its share of users."""

    call: int
    live: str
    canary: str | None
    share: float


@dataclass(frozen=True)
class Stop:
    """Finish now."""


# Model process -> HTTP process.


@dataclass(frozen=True)
class Ready:
    """The model is loaded."""

    state: PolicyState


@dataclass(frozen=True)
class LoadFailed:
    """The model could not be loaded; the process ends."""

    traceback: str


@dataclass(frozen=True)
class Done:
    """Requests complete, as their rows leave the batch."""

    samples: list[tuple[int, Sample]]


@dataclass(frozen=True)
class Failed:
    """Requests whose decoding step raised."""

    keys: list[int]
    message: str


@dataclass(frozen=True)
class Reply:
    """A control call done; the policy as it stands after it."""

    call: int
    state: PolicyState


@dataclass(frozen=True)
class Refused:
    """A control call refused: the error's type name and message."""

    call: int
    error_type: str
    message: str


ToModel = Job | Install | Route | Stop
FromModel = Ready | LoadFailed | Done | Failed | Reply | Refused
