"""The product's rules for a completion, written once above whichever engine decodes it.

Before the engine (`plan`): the version that serves the user (backend/routing.py), the text the
prompt leaves out for healing (core/healing.py), where the completion ends (backend/stops.py), and
the version's learned cut, confidence floor and show policy (from its checkpoint's metadata), and
whether the model is called at all (backend/show_decision.py). After it (`finish`): a completion
the floor or the learned filter withholds is an abstention; otherwise the text shown is cut at its
stop and starts after the healed text.

`Completions` is what the routes and the checkpoint lifecycle hold: it routes, installs and
removes versions, and completes requests, through an engine (backend/engine.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from backend import stops
from backend.engine import Engine, EngineInfo, EngineRequest, Generation, Gone, Stop
from backend.routing import Routing
from backend.show_decision import showing
from core.confidence import cursor_place
from core.healing import after_healed, healed_text
from core.show_policy import ShowPolicy, ShowSignals
from core.wire import CHECKPOINT_METADATA, CheckpointMetadata, ServingDecision

log = logging.getLogger(__name__)


@dataclass
class Request:
    prefix: str
    suffix: str
    max_new_tokens: int | None
    user_id: str
    language: str = "python"
    # The client's signals for the show policy (CompleteRequest.signals).
    signals: ShowSignals | None = None
    # False: the floors decide even where the version has a learned show policy (an evaluation's
    # CompleteRequest.show_rule "floors").
    learned: bool = True


@dataclass
class Sample:
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    token_logprobs: list[float]
    model_version: str
    # The engine's time to first token (Generation.first_token_s), for /metrics.
    first_token_s: float | None = None
    # How it was decided whether it is shown; None where nothing decided (an EngineRequest
    # planned without a Showing).
    decision: ServingDecision | None = None


@dataclass(frozen=True)
class Cut:
    """A version's learned serving rules (CheckpointMetadata): where its completions end, and
    which it withholds. None: no such rule."""

    # Rows end before their first sampled token whose log-prob is below this (trainer/stopping.py).
    stop_logprob: float | None = None
    # A completion less sure than the floor of the place where the cursor stood is not shown
    # (core/confidence.py, trainer/withholding.py); a place without one shows everything.
    min_confidence: dict[str, float] = field(default_factory=dict)
    # Decides instead of the floors where it is set (core/show_policy.py).
    show_policy: ShowPolicy | None = None


@dataclass(frozen=True)
class PolicyState:
    """What is served now: the routing, the engine's sampling, each version's learned rules."""

    live: str
    canary: str | None
    canary_share: float
    temperature: float
    fim: str
    # Each installed version's learned serving rules, where it has any.
    cuts: dict[str, Cut] = field(default_factory=dict)


def version_rules(path: Path) -> Cut:
    """The learned rules in a checkpoint's metadata; none for a checkpoint without metadata."""
    metadata = path / CHECKPOINT_METADATA
    if not metadata.is_file():
        return Cut()
    meta = CheckpointMetadata.model_validate_json(metadata.read_text())
    return Cut(meta.stop_logprob, meta.min_confidence, meta.show_policy)


def plan(request: Request, version: str, cut: Cut) -> EngineRequest:
    """What the engine is asked for: the request under `version`, with the rules that act while
    it decodes and how its completion is shown, drawn now (the version's learned policy, where it
    has one and the request does not ask for the floors)."""
    policy = cut.show_policy if request.learned else None
    return EngineRequest(
        prefix=request.prefix,
        suffix=request.suffix,
        version=version,
        stop=Stop(
            stops.is_mid_line(request.prefix), request.prefix.rsplit("\n", 1)[-1], request.max_new_tokens
        ),
        healed=healed_text(request.prefix),
        stop_logprob=cut.stop_logprob,
        showing=showing(
            request.prefix,
            request.suffix,
            request.language,
            request.signals,
            policy,
            floor=cut.min_confidence.get(cursor_place(request.prefix)),
        ),
    )


def skipped(request: EngineRequest) -> Sample:
    """The abstention answered where the trigger skipped the model call: no prompt, no tokens."""
    assert request.showing is not None
    return Sample("", [], [], [], request.version, None, request.showing.skipped())


def finish(request: EngineRequest, generation: Generation) -> Sample:
    """What the user is shown of `generation`, and what is recorded of it."""
    decision = None
    if request.showing is not None:
        # The same draw the engine's early end read: both see the same outcome.
        decision = request.showing.decide(generation.token_logprobs)
    if decision is not None and not decision.shown:
        # An abstention, recorded as one: no tokens, so nothing for the policy gradient to credit
        # (what was sampled and not shown has no outcome); its features are kept in the decision.
        first = generation.first_token_s
        return Sample("", generation.prompt_ids, [], [], generation.version, first, decision)
    healed = generation.healed
    shown = stops.finish(generation.text, request.stop.mid_line, request.stop.line_prefix(healed))
    text = after_healed(shown, healed)
    if decision is not None and not text:
        decision = decision.model_copy(update={"shown": False})  # nothing was left to show
    return Sample(
        text=text,
        prompt_ids=generation.prompt_ids,
        completion_ids=generation.completion_ids,
        token_logprobs=generation.token_logprobs,
        model_version=generation.version,
        first_token_s=generation.first_token_s,
        decision=decision,
    )


class Completions:
    """Serving through an engine: routing, each version's rules, and versions removed once unused."""

    # Known once the engine has started.
    info: EngineInfo

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.routing = Routing()
        self.cuts: dict[str, Cut] = {}
        # Installs, routes and removals one at a time, so a removal never crosses a new install.
        self._control = asyncio.Lock()
        self._removals: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.info = await self.engine.start()

    async def close(self) -> None:
        for task in list(self._removals):
            task.cancel()
        await asyncio.gather(*self._removals, return_exceptions=True)
        await self.engine.close()

    @property
    def policy(self) -> PolicyState:
        routing = self.routing
        return PolicyState(
            routing.live,
            routing.canary,
            routing.canary_share,
            self.info.temperature,
            self.info.fim,
            dict(self.cuts),
        )

    @property
    def failure(self) -> Exception | None:
        return self.engine.failure

    @property
    def batches(self) -> int:
        return self.engine.batches

    @property
    def dropped(self) -> int:
        return self.engine.dropped

    @property
    def waiting(self) -> int | None:
        """Requests the engine holds waiting for a place in its batch; None where it cannot say
        (an engine in front of a server whose queue is the server's)."""
        return getattr(self.engine, "waiting", None)

    async def install(self, version: str, path: Path) -> None:
        """Install a version (a no-op when it is installed); it serves once routed to."""
        rules = await asyncio.to_thread(version_rules, path)
        async with self._control:
            await self.engine.install(version, path)
            self.routing.add(version)
            if rules != Cut():
                self.cuts[version] = rules

    async def route(self, live: str, canary: str | None, share: float) -> None:
        async with self._control:
            self.routing.route(live, canary, share)
        log.info("serving live %s, canary %s (share %.2f)", live, canary, share)
        await self._remove_unused()

    async def complete(self, request: Request, gone: Gone | None = None) -> Sample:
        version = self.routing.take(request.user_id)
        try:
            asked = plan(request, version, self.cuts.get(version, Cut()))
            if asked.showing is not None and not asked.showing.called:
                return skipped(asked)
            generation = await self.engine.complete(asked, gone)
        finally:
            if self.routing.give_back(version):
                task = asyncio.create_task(self._remove_unused(), name="remove-unused-versions")
                self._removals.add(task)
                task.add_done_callback(self._removed)
        return finish(asked, generation)

    async def _remove_unused(self) -> None:
        async with self._control:
            for version in self.routing.unused():
                self.routing.removed(version)
                self.cuts.pop(version, None)
                await self.engine.remove(version)

    def _removed(self, task: asyncio.Task[None]) -> None:
        self._removals.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("removing an unused version failed", exc_info=error)
