"""The store interface: everything the backend asks of its database, and nothing of how it is kept.

The routes, the finalizer, the canary, retention, the dashboard and /metrics see a `Store` and the
types below, never a connection, a row or a dialect of SQL. Today's store is SQLite
(`backend/store/sqlite/`); a PostgreSQL one stands beside it by implementing the same methods with
the same meaning. What each method promises is said here; how is the implementation's business.

Time is seconds since the epoch (float). Rows are named by their own keys (completion and event
ids, version names, token ids), so nothing of one engine's row identity crosses this line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict, runtime_checkable

from pydantic import ValidationError

from core import wire
from core.config import RewardConfig

# -- checkpoint states ------------------------------------------------------------------------

LIVE = "live"
RETIRED = "retired"
STATES = frozenset({"candidate", "gated", "canary", LIVE, RETIRED, "rejected", "rolled_back"})


class UnknownCheckpoint(LookupError):
    """A transition named a version the store has never registered."""


class Entered(TypedDict):
    """The latest transition of a version into a state."""

    reason: str
    metrics: dict[str, Any]
    at: float


class Transition(TypedDict):
    id: int  # increasing in the order transitions were recorded
    version: str
    from_state: str | None  # None for the row that records the upload
    to_state: str
    reason: str
    metrics: dict[str, Any]
    at: float


# -- figures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squares of one metric: enough for a mean and a variance."""

    n: int
    total: float
    squares: float

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def variance(self) -> float:
        if self.n < 2:
            return 0.0
        mean = self.total / self.n
        return max(self.squares / self.n - mean * mean, 0.0) * self.n / (self.n - 1)


@dataclass(frozen=True)
class PersonMeans:
    """Each person's mean of each metric over their episodes in an arm: the moments are over people
    (n people, sum and sum of squares of their means), so every person weighs the same."""

    reward: Moments
    accepted: Moments
    arc: Moments


@dataclass(frozen=True)
class ArmFigures:
    """One version's episodes over a period, for the canary's test (backend/canary.py).

    reward: over trainable episodes (reward not None, abstentions included); accepted (0/1): over
    rated ones (trainable and shown); arc, accepted-and-retained characters (similarity × length of
    the text for accepted outcomes, 0 otherwise): over every finalized episode. `people`: the same
    metrics as each person's mean (a person counts under a metric once they have one such episode).
    """

    version: str
    reward: Moments
    accepted: Moments
    arc: Moments
    people: PersonMeans

    @classmethod
    def of_people(cls, version: str, rows: Iterable[Sequence[float]]) -> ArmFigures:
        """From one row per person: (reward n, sum, squares, rated n, accepted n, episodes, arc sum,
        arc squares), as the stores' `arm` query groups them."""
        people = [[float(value or 0) for value in row] for row in rows]

        def moments(n: int, total: int, squares: int) -> tuple[Moments, Moments]:
            episodes = Moments(
                int(sum(r[n] for r in people)), sum(r[total] for r in people), sum(r[squares] for r in people)
            )
            means = [r[total] / r[n] for r in people if r[n]]
            return episodes, Moments(len(means), sum(means), sum(m * m for m in means))

        # An accepted count is its own sum of squares (0/1 outcomes).
        (reward, reward_people), (accepted, accepted_people), (arc, arc_people) = (
            moments(0, 1, 2),
            moments(3, 4, 4),
            moments(5, 6, 7),
        )
        return cls(version, reward, accepted, arc, PersonMeans(reward_people, accepted_people, arc_people))

    def summary(self) -> dict[str, Any]:
        return {
            "episodes": self.reward.n,
            "mean_reward": self.reward.mean,
            "accept_rate": self.accepted.mean,
            "arc_per_100": None if self.arc.mean is None else 100 * self.arc.mean,
            "people": self.people.reward.n,
            "person_mean_reward": self.people.reward.mean,
            "person_accept_rate": self.people.accepted.mean,
            "person_arc_per_100": None if self.people.arc.mean is None else 100 * self.people.arc.mean,
        }


class VersionStats(TypedDict):
    """The admin page's counts, overall or of one model version.

    served: completions returned; shown: those with text; abstained: those without. finalized:
    episodes scored so far; trainable: those with a reward (abstentions included); rated: trainable
    episodes of shown completions; accepted: rated episodes accepted whole or in part.
    accept_rate = accepted / rated; mean_reward over trainable episodes (None while there are none).
    """

    served: int
    shown: int
    abstained: int
    finalized: int
    trainable: int
    rated: int
    accepted: int
    accept_rate: float | None
    mean_reward: float | None
    outcomes: dict[str, int]


class Stats(VersionStats):
    per_version: dict[str, VersionStats]


class Slice(TypedDict):
    """One client kind's completions in one language over a period, by serving time.

    client: CompleteRequest.client as recorded ("lsp", "tabby", "openai", …); language: the
    context's language as recorded ("" unknown). Counts as in VersionStats; reward_sum over trainable
    episodes; arc_sum: accepted-and-retained characters over finalized episodes (as ArmFigures.arc),
    so ARC per 100 requests is 100 × arc_sum / finalized.
    """

    client: str
    language: str
    served: int
    shown: int
    finalized: int
    trainable: int
    rated: int
    accepted: int
    reward_sum: float
    arc_sum: float


class SeriesPoint(TypedDict):
    """One version's figures over one time bucket, by serving time."""

    version: str
    at: float
    served: int
    mean_reward: float | None
    accept_rate: float | None
    arc_per_100: float | None


# -- upkeep -----------------------------------------------------------------------------------


class Purged(TypedDict):
    events: int
    completions: int


class TokenRecord(TypedDict):
    id: int
    name: str
    role: str
    hash: str  # sha256 of the token; the token itself is never stored
    created_at: float
    revoked_at: float | None


# -- rows that could not be read --------------------------------------------------------------

# What a row set aside was: an outcome event, or a served completion.
EVENTS = "events"
COMPLETIONS = "completions"
_REASON_CHARS = 500


class SetAside(TypedDict):
    table: str  # EVENTS or COMPLETIONS
    key: str
    reason: str
    at: float


def reason_of(error: Exception) -> str:
    """Why a row failed to load, in one line, without the values it holds: those may be code."""
    if isinstance(error, ValidationError):
        details = error.errors(include_url=False, include_input=False, include_context=False)
        text = "; ".join(f"{'.'.join(str(p) for p in d['loc']) or 'row'}: {d['msg']}" for d in details)
    elif type(error) is ValueError:  # the store's own words
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return text[:_REASON_CHARS]


# -- the interface ----------------------------------------------------------------------------


@runtime_checkable
class Store(Protocol):
    """The backend's store. Every method is safe to call from concurrent coroutines; a write is
    whole or absent (committed or rolled back), and reads see only committed writes."""

    async def close(self) -> None:
        """Finish pending writes and release the database."""

    def exclusive(self, name: str, wait: bool = False) -> AbstractAsyncContextManager[bool]:
        """`async with store.exclusive(name) as mine:` mine is True for at most one process at a
        time among the backends sharing this store, until the block ends (a background pass, the
        checkpoint lifecycle); False at once when another holds it, unless `wait`. A store one
        process owns (SQLite) always says True. A backend that dies lets go."""

    # Ingest: what happens.

    async def record_completion(
        self,
        *,
        completion_id: str,
        user_id: str,
        model_version: str,
        context: dict[str, Any],
        prompt_ids: Sequence[int],
        completion_ids: Sequence[int],
        token_logprobs: Sequence[float],
        temperature: float,
        text: str,
        created_at: float,
        latency_ms: float,
        evaluation: bool = False,
        client: str = "lsp",
        language: str = "",
        decision: wire.ServingDecision | None = None,
    ) -> None:
        """Store one served completion (abstentions too: they become episodes with reward 0).
        `evaluation`: asked for as part of an evaluation (CompleteRequest.evaluation): scored like
        any other, never in the trainer's feed. `client`: the kind of client that asked
        (CompleteRequest.client: "lsp", "tabby", "openai"); `language`: the context's language. Both
        are kept beyond retention (the context itself is purged), for `breakdown`. `decision`: how
        serving decided whether it was shown (numbers only), returned on its episode. Committed before
        it returns: its id may then be handed to a client."""

    async def store_events(
        self, valid: list[tuple[int, wire.Event]], refused: list[wire.RefusedEvent], received_at: float
    ) -> wire.EventsResponse:
        """Store a batch's valid events (each with its index in the batch); an event naming an
        unknown completion is refused with its reason. An event id seen before, in this batch or
        earlier, is a duplicate and stored once, so a client may resend a batch it is unsure of."""

    # Episodes: closing windows, the trainer's feed, re-scoring.

    async def finalize_due(
        self, now: float, window_s: float, rewards: RewardConfig, min_visible_ms: float
    ) -> int:
        """Score and close every open completion that is due: its window (created_at + window_s)
        has ended, a final event arrived, or it is an abstention. Each gets an episode, even with
        a None reward, and is never looked at again. A row that cannot be read is set aside (see
        `quarantined`) and the pass goes on. Returns how many closed."""

    async def episodes_after(
        self, cursor: int, limit: int, include_evaluation: bool = False
    ) -> wire.EpisodesPage:
        """The trainer's feed: trainable episodes (reward not None) with seq > cursor, oldest
        first, at most `limit`. Seqs increase in the order episodes were finalized and are never
        reused. next_cursor moves past untrainable rows too, so the trainer never rescans them.
        Evaluation episodes are left out (and stepped over), unless `include_evaluation`: the
        simulator's measure of its evaluation rounds, each marked `evaluation`."""

    async def rescore(self, rewards: RewardConfig, min_visible_ms: float) -> int:
        """Score every finalized episode again from its stored events; returns how many changed."""

    # Checkpoints: each version's state and every transition with its reasons and figures.

    async def next_version(self) -> str:
        """Reserve the next version name ("v1", "v2", …), never handed out twice."""

    async def add_checkpoint(
        self,
        version: str,
        parent_version: str | None,
        path: Path | str,
        metrics: dict[str, Any] | None = None,
        state: str = "candidate",
        reason: str = "uploaded",
        created_at: float | None = None,
    ) -> None:
        """Register a checkpoint and record its first transition (from nothing to `state`)."""

    async def transition(
        self, version: str, to_state: str, reason: str, metrics: dict[str, Any] | None = None
    ) -> None:
        """Move a version to `to_state` and record why; going live retires the previous live one
        (at most one version is live). `metrics` are recorded with the transition and merged into
        the checkpoint's own. UnknownCheckpoint for a version never added."""

    async def live_version(self) -> str:
        """The live version, or wire.BASE_VERSION when none is."""

    async def versions_in(self, state: str) -> list[str]:
        """The versions in `state`, in the order they were added."""

    async def entered(self, version: str, state: str) -> Entered | None:
        """The latest transition of `version` into `state`, if any."""

    async def checkpoint(self, version: str) -> wire.CheckpointInfo | None: ...

    async def checkpoint_path(self, version: str) -> Path | None: ...

    async def checkpoints(self) -> list[wire.CheckpointInfo]:
        """All checkpoints in the order they were added."""

    async def transitions(self, version: str | None = None) -> list[Transition]:
        """Transition history (of one version, or all), oldest first."""

    # Figures: the admin page, the canary's arms, the charts.

    async def stats(self) -> Stats:
        """Counts and rates overall and per model version."""

    async def arm(self, version: str, since: float, until: float | None = None) -> ArmFigures:
        """Figures of `version`'s episodes for completions served in [since, until)."""

    async def series(self, since: float, bucket_s: float, until: float | None = None) -> list[SeriesPoint]:
        """Per version and time bucket (serving time in [since, until), until None: no end), by bucket."""

    async def reward_histogram(
        self, since: float, width: float = 0.05, until: float | None = None
    ) -> list[tuple[float, int]]:
        """(reward rounded to `width`, count) of trainable episodes served in [since, until)."""

    async def events_per_minute(self, since: float, until: float | None = None) -> list[tuple[float, int]]:
        """(minute, events received in it), oldest first, received in [since, until)."""

    async def breakdown(self, since: float, until: float | None = None) -> list[Slice]:
        """Figures per (client, language) of the completions served in [since, until), one Slice
        for each pair that has any, ordered by client then language (the dashboard's tables)."""

    async def latencies(self, since: float, limit: int = 20_000) -> list[float]:
        """Latencies (ms) of the latest completions served since `since`."""

    # Upkeep: retention, access tokens, small settings.

    async def purge_older_than(self, cutoff: float) -> Purged:
        """Delete the events and contexts of finalized completions served before `cutoff`, and the
        content of rows set aside by then; episodes and every figure above stay."""

    async def add_token(self, name: str, role: str, token_hash: str) -> int:
        """Store a token's hash; returns its id."""

    async def revoke_token(self, token_id: int) -> bool:
        """Revoke an active token; False when there is none with that id."""

    async def tokens(self, include_revoked: bool = False) -> list[TokenRecord]:
        """Tokens by id (active ones only unless `include_revoked`)."""

    async def get_setting(self, key: str) -> Any:
        """A small JSON value kept under `key`, or None."""

    async def set_setting(self, key: str, value: Any) -> None:
        """Keep a JSON value under `key`; None removes it."""

    # Rows that could not be read: set aside by the passes above, listed for the dashboard.

    async def quarantine_counts(self) -> dict[str, int]:
        """How many rows of each kind (EVENTS, COMPLETIONS) are set aside."""

    async def quarantined(self, limit: int = 20) -> list[SetAside]:
        """The latest rows set aside, newest first."""
