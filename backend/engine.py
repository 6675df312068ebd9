"""The serving engine interface: what the backend asks of whatever runs the model.

An engine completes requests under the version (adapter) each names, and installs and removes
versions; it decides nothing about who gets which version, what is shown or when a completion
is withheld. Those product rules are written once above it (backend/completions.py): a request
reaches the engine with its version chosen, and with the rules that must act while it decodes
given as data (`Stop`, the healed text, the cut, the confidence floor), so any engine can apply
them (one in process, or one in front of an inference server).

Two engines implement it (`serving.engine`). The in-process one runs the model in a process of
its own with continuous batching (backend/batching.py, model_process.py, decoding.py). The vLLM
one (backend/vllm_engine.py) maps `install`/`remove` to vLLM's runtime LoRA loading
(/v1/load_lora_adapter, /v1/unload_lora_adapter) and `complete` to a streamed /v1/completions with
`model` set to the version; the rules given as data become its request's fields where it has them
(the token cap, a stop at the newline for a mid-line row, the healed text for a logits processor)
and act on the stream as it comes where it has not (a cut ends the row before the first token
below it). `finish` above the engine applies the stops and the floor to any engine's `Generation`.

This module imports nothing heavy: the HTTP process never loads torch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from backend.show_decision import Showing


class EngineUnavailable(RuntimeError):
    """Nothing can be served now (the model failed to load, or is being restarted): ask again."""


class ClientGone(RuntimeError):
    """The request was dropped before it was decoded: its client had hung up."""


# Whether the client that asked has hung up.
Gone = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Stop:
    """Where a row ends (backend/stops.py): at the end of its line when the cursor stands mid-line,
    else at the end of its block; at EOS; or after `max_new_tokens` (None: the engine's own cap)."""

    mid_line: bool
    # The cursor's line up to the cursor: a block's first line is measured at its real indentation.
    line: str
    max_new_tokens: int | None = None

    def line_prefix(self, healed: str) -> str:
        """What precedes the completion's text on its line when the prompt leaves out `healed`."""
        return self.line[: len(self.line) - len(healed)]


@dataclass(frozen=True)
class EngineRequest:
    """One row to decode, with every rule that acts during decoding decided for it."""

    prefix: str
    suffix: str
    version: str
    stop: Stop
    # The end of `prefix` that the prompt leaves out and the first tokens must spell out
    # (core/healing.py); "" for none. An engine whose tokens cannot spell it keeps it in the prompt.
    healed: str = ""
    # The version's learned cut: the row ends before its first sampled token whose log-prob is
    # below this (trainer/stopping.py). None: no cut.
    stop_logprob: float | None = None
    # How its completion is shown (backend/show_decision.py: the version's learned show policy or
    # its confidence floor), decided once up front. Whether it is shown is decided above the engine
    # from its log-probs; an engine may end a row early once `showing` withholds it, since nothing
    # of it is shown. None: shown whatever its log-probs.
    showing: Showing | None = None


def cut_before(stop_logprob: float | None, logprob: float) -> bool:
    """Whether the learned cut ends a row before a token sampled at `logprob`."""
    return stop_logprob is not None and logprob < stop_logprob


def withheld_whatever_follows(logprobs: list[float], showing: Showing | None) -> bool:
    """Whether a row is withheld already (Showing.withheld_whatever_follows), so decoding the rest
    would be wasted."""
    return showing is not None and showing.withheld_whatever_follows(logprobs)


@dataclass
class Generation:
    """What the engine decoded for one request."""

    version: str
    prompt_ids: list[int]
    completion_ids: list[int]
    # The model's own log-probs of `completion_ids` (at the serving temperature, unrestricted by
    # healing), so the trainer's importance ratios are exact.
    token_logprobs: list[float]
    # `completion_ids` decoded, special tokens left out; stops not yet applied.
    text: str
    # The healed text the first tokens were held to: the request's, or "" where it stayed in the prompt.
    healed: str = ""
    # Seconds from `complete` being called to the first token decoded, queueing included; None where
    # the engine cannot tell. /metrics' flywheel_time_to_first_token_seconds observes it: an engine
    # in front of an inference server sets it from its stream's first chunk (or from the server's
    # own figure), the in-process one from its model process's clock.
    first_token_s: float | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What the engine serves with, known once it has started."""

    temperature: float
    fim: str


class Engine(Protocol):
    """Runs the model: the versions installed, and requests completed under each row's version."""

    async def start(self) -> EngineInfo:
        """Load the model; ready to install versions and complete requests once it returns."""
        ...

    async def close(self) -> None: ...

    async def install(self, version: str, path: Path) -> None:
        """Make `version` (a LoRA adapter at `path`) servable; a no-op when it is installed."""
        ...

    async def remove(self, version: str) -> None:
        """Free `version`. Called once no request the caller sent names it; an engine still
        decoding a row under it (its caller gave up waiting) frees it after that row."""
        ...

    async def complete(self, request: EngineRequest, gone: Gone | None = None) -> Generation:
        """Decode one request; many run at once and share batches, each under its own version.
        `gone` says whether the client has hung up: such a request is dropped before it costs a
        prefill (ClientGone). EngineUnavailable: nothing can be served now."""
        ...

    # For /metrics: requests dropped because their client had gone; batches started from idle.
    dropped: int
    batches: int

    @property
    def failure(self) -> Exception | None:
        """Why nothing can be served now (a model that could not be restarted); None if all is well."""
        ...
