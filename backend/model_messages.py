"""The contract between the backend's HTTP process and its model process (backend/model_process.py).

Messages are tuples whose first item names them, pickled over a multiprocessing pipe.

HTTP process -> model process:
    ("job", key, Request)                      decode this request
    ("install", call, version, adapter path)   install an adapter (a no-op when installed)
    ("route", call, live, canary, share)       serve `live`, and `canary` to its share of users
    ("stop",)                                  finish now

Model process -> HTTP process:
    ("ready", PolicyState)                     the model is loaded; nothing comes before this
    ("error", traceback)                       the model could not be loaded; the process ends
    ("done", [(key, Sample), ...])             requests complete
    ("failed", [key, ...], message)            requests whose decoding step raised
    ("reply", call, PolicyState, None)         a control call done
    ("reply", call, None, (error type, message))  a control call refused

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
