"""The HTTP contract between the language server, the trainer and the backend.

This module imports pydantic only: the language server and trainer import it, and must stay light.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.confidence import AFTER_SYMBOL, IN_WORD, LINE_START
from core.show_policy import ShowPolicy, ShowSignals

API_PREFIX = "/v1"
# The trainer POSTs a TrainerReport here (admin token), for the dashboard's trainer status.
TRAINER_STATUS_PATH = "/v1/trainer/status"
# `flywheel simulate` POSTs its SimulationReport here after each cycle (admin token), for the dashboard.
SIMULATION_PATH = "/v1/simulation"
MAX_EVENTS_PER_BATCH = 1000
# Longest text an event carries (survival: the text there; rewrite: what was written instead).
MAX_EVENT_TEXT = 20_000


class CompletionContext(BaseModel):
    """What the editor knows at the cursor. Secrets are redacted before this leaves the editor."""

    prefix: Annotated[str, Field(max_length=200_000)]
    suffix: Annotated[str, Field(max_length=200_000)] = ""
    path: str = ""
    language: str = "python"


class CompleteRequest(BaseModel):
    context: CompletionContext
    # A hint only, kept for older clients: the backend decides who a request is from by its token.
    user_id: Annotated[str, Field(max_length=128)] = "anonymous"
    client: Annotated[str, Field(max_length=64)] = "lsp"
    max_new_tokens: Annotated[int | None, Field(ge=1, le=512)] = None
    # Off: nothing of this request is kept (no context, no text, no episode); the suggestion is
    # still served.
    telemetry: bool = True
    # On: part of an evaluation (flywheel simulate's held-out rounds). Kept and scored like any
    # other, but never in the trainer's episodes. Any client may set it: it only takes its own
    # requests out of training, never puts anything in, so it hides nothing that could move a model.
    evaluation: bool = False
    # What the client knows for the show policy (core/show_policy.py); None: nothing.
    signals: ShowSignals | None = None
    # "floors": serve this request under the version's confidence floors even where it has a learned
    # show policy. Only with evaluation (a side-by-side of the two rules), so that every trained
    # episode was served under its version's own rule.
    show_rule: Literal["version", "floors"] = "version"


class CompleteResponse(BaseModel):
    completion_id: str
    # Empty text means the policy abstained: nothing is shown.
    text: str
    model_version: str
    # Log-probability of each sampled token under the serving policy (temperature included).
    token_logprobs: list[float]
    latency_ms: float


class EventKind(StrEnum):
    SHOWN = "shown"
    ACCEPTED = "accepted"
    PARTIALLY_ACCEPTED = "partially_accepted"
    REJECTED = "rejected"
    IGNORED = "ignored"
    SURVIVAL = "survival"
    REWRITE = "rewrite"


class Event(BaseModel):
    """One observation about one completion, made by the language server."""

    # NaN and infinity are refused per event: stored, they cannot be read back as JSON numbers.
    model_config = ConfigDict(allow_inf_nan=False)

    event_id: Annotated[str, Field(min_length=8, max_length=64)]
    completion_id: Annotated[str, Field(min_length=1, max_length=64)]
    kind: EventKind
    # Client wall clock, seconds since the epoch.
    client_ts: float
    # How long the suggestion had been visible when this event happened.
    visible_ms: Annotated[float | None, Field(ge=0)] = None
    # Partial acceptance: accepted length in UTF-16 code units from the start of the insert text.
    # Counts of a suggestion's characters: none is longer than an event's longest text.
    accepted_chars: Annotated[int | None, Field(ge=0, le=MAX_EVENT_TEXT)] = None
    # Survival: seconds since acceptance at which this check was made.
    delay_s: Annotated[float | None, Field(ge=0)] = None
    # Survival / rewrite: similarity in [0, 1] between the suggestion and the text now at the spot.
    similarity: Annotated[float | None, Field(ge=0, le=1)] = None
    retained_chars: Annotated[float | None, Field(ge=0, le=MAX_EVENT_TEXT)] = None
    # Survival: text now in the tracked range; rewrite: what the user wrote instead.
    text: Annotated[str | None, Field(max_length=MAX_EVENT_TEXT)] = None
    # Why the completion ended (ignored: typed_over, moved_away, superseded, closed).
    reason: Annotated[str | None, Field(max_length=64)] = None
    # The last event of this completion's life: the backend may finalize the episode early.
    final: bool = False


class EventsRequest(BaseModel):
    # Raw items: each event is validated on its own so one bad event refuses only itself.
    events: Annotated[list[Any], Field(max_length=MAX_EVENTS_PER_BATCH)]


class EventBatch(BaseModel):
    """A batch whose events are all valid: the common case, parsed and checked in one pass."""

    # Event and completion ids are new strings every time: caching them only churns the cache.
    model_config = ConfigDict(cache_strings="keys", allow_inf_nan=False)

    events: Annotated[list[Event], Field(max_length=MAX_EVENTS_PER_BATCH)]


class RefusedEvent(BaseModel):
    index: int
    event_id: str | None
    reason: str


def parse_events(body: bytes) -> tuple[list[tuple[int, Event]], list[RefusedEvent]]:
    """The (index, event) pairs of a POSTed batch that are valid, and the refused ones with reasons.

    Raises ValidationError only when the body is not a batch at all (not JSON, no event list, or
    too many events).
    """
    try:
        return list(enumerate(EventBatch.model_validate_json(body).events)), []
    except ValidationError:
        return judge_events(EventsRequest.model_validate_json(body).events)


def judge_events(raw: list[Any]) -> tuple[list[tuple[int, Event]], list[RefusedEvent]]:
    """Validate each raw event on its own, so that one bad event refuses only itself."""
    valid: list[tuple[int, Event]] = []
    refused: list[RefusedEvent] = []
    for index, item in enumerate(raw):
        try:
            valid.append((index, Event.model_validate(item)))
        except ValidationError as error:
            event_id = item.get("event_id") if isinstance(item, dict) else None
            refused.append(
                RefusedEvent(
                    index=index,
                    event_id=event_id if isinstance(event_id, str) else None,
                    reason=_why(error),
                )
            )
    return valid, refused


def _why(error: ValidationError) -> str:
    """pydantic's report in one line: 'field: message; field: message'."""
    parts = []
    for detail in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in detail["loc"]) or "event"
        parts.append(f"{where}: {detail['msg']}")
    return "; ".join(parts)[:500]


class EventsResponse(BaseModel):
    stored: int
    duplicates: int
    refused: list[RefusedEvent]


# A version's confidence floor for each place the cursor can stand (core/confidence.py).
ConfidenceFloors = dict[
    Literal[LINE_START, IN_WORD, AFTER_SYMBOL], Annotated[float, Field(le=0, allow_inf_nan=False)]
]


class ServingDecision(BaseModel):
    """How serving decided whether a completion was shown (core/show_policy.py)."""

    model_config = ConfigDict(allow_inf_nan=False)

    # "floors": the version's confidence floors decided; "learned": its show policy.
    rule: Literal["floors", "learned"]
    # The features the rule could read: the filter's when the model was called, else the trigger's.
    features: dict[str, float] = Field(default_factory=dict)
    # False: the trigger skipped the model call (an abstention nobody waited for).
    called: bool = True
    shown: bool = True
    # The chance, given its features, that this completion was shown (call chance × show chance):
    # below 1 for what exploration showed; the fit weighs each shown episode by its inverse. For
    # one not shown, the chance it had (0 where nothing explores).
    propensity: Annotated[float, Field(ge=0, le=1)] = 1.0

    @model_validator(mode="after")
    def _shown_had_a_chance(self) -> ServingDecision:
        if self.shown and self.propensity == 0:
            raise ValueError("a shown completion had a chance above 0 (propensity)")
        return self


class Episode(BaseModel):
    """A finalized completion with its reward, as the trainer receives it."""

    seq: int
    completion_id: str
    user_id: str
    model_version: str
    prompt_ids: list[int]
    # Sampled tokens, including the stop token; [eos] alone is an abstention.
    completion_ids: list[int]
    # Log-probabilities of completion_ids at serving time (the behaviour policy).
    token_logprobs: list[float]
    temperature: float
    text: str
    outcome: str
    reward: float
    created_at: float
    finalized_at: float
    # Shortest visible time before acceptance, for the inhuman-speed filter.
    accept_visible_ms: float | None = None
    # What the user wrote at the spot instead (rewrite event), or the edited text that survived an
    # acceptance; None when unknown or unchanged. The chosen side of DPO pairs.
    rewrite: str | None = None
    # Where the cursor stood when the completion was asked for (core/confidence.py); "" unknown.
    place: str = ""
    # Asked for as part of an evaluation (CompleteRequest.evaluation): only in a page that asks
    # for them (include_evaluation), never in the trainer's.
    evaluation: bool = False
    # How serving decided whether to show it, for the show policy's next fit; None: not recorded.
    decision: ServingDecision | None = None


class EpisodesPage(BaseModel):
    episodes: list[Episode]
    next_cursor: int


class ModelInfo(BaseModel):
    base_model: str
    live_version: str
    fim: str
    temperature: float
    # The candidate being compared with live on real traffic; the trainer waits for its verdict.
    canary_version: str | None = None
    # The live version's learned cut (CheckpointMetadata.stop_logprob), the trainer's starting point.
    stop_logprob: float | None = None
    # The live version's confidence floors (CheckpointMetadata.min_confidence), likewise.
    min_confidence: ConfidenceFloors = Field(default_factory=dict)
    # The live version's learned show policy (CheckpointMetadata.show_policy), likewise.
    show_policy: ShowPolicy | None = None
    # LSP languageIds the model serves (config model.languages): clients ask for no others by default.
    languages: list[str] = Field(default_factory=lambda: ["python"])


class CheckpointInfo(BaseModel):
    version: str
    state: str
    parent_version: str | None
    created_at: float
    metrics: dict[str, Any] = Field(default_factory=dict)


class GateResult(BaseModel):
    """The trainer's eval gate verdict on a candidate, stored with the checkpoint."""

    passed: bool
    reason: str = ""
    figures: dict[str, float] = Field(default_factory=dict)


class CheckpointMetadata(BaseModel):
    """Sent beside the adapter files on upload."""

    base_model: str
    parent_version: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    # None: no gate ran (the backend then treats the candidate as ungated).
    gate: GateResult | None = None
    # Serving cuts this version's completions before their first token whose log-prob (at the
    # serving temperature) is below this; learned from outcomes (trainer/stopping.py). None: no cut.
    stop_logprob: Annotated[float | None, Field(le=0, allow_inf_nan=False)] = None
    # Serving withholds this version's completions whose confidence is below the floor of the
    # place where the cursor stood (core/confidence.py): they are abstentions. Learned from
    # outcomes (trainer/withholding.py). A place without a floor shows everything.
    min_confidence: ConfidenceFloors = Field(default_factory=dict)
    # Serving decides with this instead of the floors where it is set (core/show_policy.py; learned
    # by trainer/show_policy_fit.py). None: the floors decide.
    show_policy: ShowPolicy | None = None


class TrainerReport(BaseModel):
    """The trainer's state and its last cycle's figures, for the dashboard."""

    model_config = ConfigDict(allow_inf_nan=False)

    state: str  # idle, training, gating, uploading, error
    at: float
    message: str = ""
    cycle: dict[str, Any] = Field(default_factory=dict)


Rate = Annotated[float | None, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]


class SimulationCycle(BaseModel):
    """One row of `flywheel simulate`'s cycles.csv: the same fields as simulate.report.CycleRow."""

    # No NaN or infinity: the report is stored as JSON and served back, where neither is valid.
    model_config = ConfigDict(allow_inf_nan=False)

    cycle: Count
    live_version: Annotated[str, Field(max_length=64)]
    # The evaluation round (honest developers, held-out files, same seeds every cycle).
    requests: Count = 0
    shown: Count = 0
    shown_rate: Rate = None
    accepted: Count = 0
    fixed: Count = 0
    partial: Count = 0
    dismissed: Count = 0
    episodes: Count = 0
    accept_rate: Rate = None
    arc_per_100: Annotated[float | None, Field(ge=0)] = None
    mean_reward: float | None = None
    heldout_ppl: Annotated[float | None, Field(gt=0)] = None
    # The training round and trainer cycle that led to this live version (none for cycle 0).
    train_requests: Count = 0
    train_episodes: Count = 0
    trained_on: Annotated[int | None, Field(ge=0)] = None
    candidate: Annotated[str, Field(max_length=64)] = ""
    candidate_state: Annotated[str, Field(max_length=64)] = ""
    dropped: Annotated[str, Field(max_length=2000)] = ""
    trainer_s: Annotated[float | None, Field(ge=0)] = None


class SimulationReport(BaseModel):
    """A simulation run's figures so far, for the dashboard; each POST replaces the last one."""

    model_config = ConfigDict(allow_inf_nan=False)

    run_id: Annotated[str, Field(min_length=1, max_length=64)]
    started_at: float
    updated_at: float
    corpus: Annotated[str, Field(max_length=1000)] = ""
    # Trainer cycles asked for: the report has planned_cycles + 1 rows when the run is over.
    planned_cycles: Count = 0
    settings: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    cycles: Annotated[list[SimulationCycle], Field(max_length=10_000)]


BASE_VERSION = "base"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Beside the adapter files in a stored checkpoint: its CheckpointMetadata.
CHECKPOINT_METADATA = "flywheel_checkpoint.json"


# An admin makes, lists and revokes access tokens here (`flywheel token` does the same offline).
TOKENS_PATH = "/v1/admin/tokens"


class TokenRequest(BaseModel):
    # Who or what the token is for ("alice", "ci"): shown to admins only, never used as an identity.
    name: Annotated[str, Field(min_length=1, max_length=200)]
    # metrics: a Prometheus scraper's, which may read /metrics and nothing else.
    role: Literal["client", "admin", "metrics"] = "client"


class TokenInfo(BaseModel):
    id: int
    name: str
    role: str
    # The pseudonym the backend files this token's completions and episodes under.
    person: str
    created_at: float
    revoked_at: float | None = None


class NewToken(TokenInfo):
    # Shown once: the backend keeps only its hash.
    token: str
