"""Tabby's protocol, mapped onto Flywheel's: its clients (the VS Code, JetBrains and Vim plugins, and
`tabby-agent` under them) can use a Flywheel backend as their Tabby server.

What Tabby's agent sends (TabbyML/tabby, crates/tabby-common/src/api/event.rs and the agent's
TabbyAgent): `POST /v1/completions` with {language, segments: {prefix, suffix, filepath, …}, user}
answered by {id, choices: [{index, text}]}; `POST /v1/events` with {type, completion_id,
choice_index, elapsed?} where type is view, select or dismiss, and `?select_kind=line` when only a
line was accepted; `GET /v1/health` (its model and device) and `GET /v1beta/server_setting` at start.

Mapping: a completion is served by the same policy and recorded with client "tabby"; view →
shown, select → accepted (final), select of a line → partially_accepted with accepted_chars the
length of the lines accepted so far, dismiss → rejected (final); `elapsed` (ms since shown) is the
event's visible_ms. Tabby sends no survival checks, so an accepted suggestion counts as kept whole
(core/rewards.py), and one shown and left is scored ignored when its window closes. The person is
the token's, never the request's `user`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Annotated, Any

from pydantic import BaseModel, Field
from uuid6 import uuid7

from core.wire import CompleteRequest, CompletionContext, Event, EventKind

CLIENT = "tabby"
# Text of recent Tabby completions, to count the characters of accepted lines: a partial accept
# names only the completion. Past this many (or after a restart) a line accept has no length,
# which core/rewards.py scores as no honest reward rather than guessing.
REMEMBERED = 20_000
# The id of an answer to a language the model does not serve: no completion, no choices.
NOT_SERVED = "flywheel-language-not-served"


class Segments(BaseModel):
    prefix: Annotated[str, Field(max_length=200_000)]
    suffix: Annotated[str | None, Field(max_length=200_000)] = None
    filepath: Annotated[str | None, Field(max_length=4096)] = None
    # git_url, declarations, relevant snippets and the clipboard are accepted and not used: the
    # policy completes from prefix and suffix, as for Flywheel's own clients.


class CompletionRequest(BaseModel):
    """Tabby's completion request (extra fields such as temperature or seed are ignored: the policy's
    own temperature is what its episodes' log-probs are measured under)."""

    language: Annotated[str | None, Field(max_length=64)] = None
    segments: Segments
    user: Annotated[str | None, Field(max_length=256)] = None


class Choice(BaseModel):
    index: int
    text: str


class CompletionResponse(BaseModel):
    id: str
    choices: list[Choice]


class LogEventRequest(BaseModel):
    type: Annotated[str, Field(max_length=64)]
    completion_id: Annotated[str, Field(min_length=1, max_length=64)]
    choice_index: Annotated[int, Field(ge=0)]
    view_id: Annotated[str | None, Field(max_length=256)] = None
    # Milliseconds since the choice was shown (newer agents send it on select and dismiss).
    elapsed: Annotated[int | None, Field(ge=0)] = None


def is_event(body: Any) -> bool:
    """A Tabby event rather than a Flywheel batch: both are POSTed to /v1/events."""
    return isinstance(body, dict) and "type" in body and "events" not in body


def complete_request(body: CompletionRequest) -> CompleteRequest:
    return CompleteRequest(
        context=CompletionContext(
            prefix=body.segments.prefix,
            suffix=body.segments.suffix or "",
            path=body.segments.filepath or "",
            language=body.language or "",
        ),
        client=CLIENT,
    )


class Texts:
    """Recent completions' texts and the lines of each accepted so far (bounded, oldest dropped)."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._size = size
        self._texts: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def remember(self, completion_id: str, text: str) -> None:
        self._texts[completion_id] = (text, 0)
        while len(self._texts) > self._size:
            self._texts.popitem(last=False)

    def accept_line(self, completion_id: str) -> int | None:
        """UTF-16 length of the lines accepted so far, this one included; None when unknown."""
        known = self._texts.get(completion_id)
        if known is None:
            return None
        text, lines = known
        lines += 1
        self._texts[completion_id] = (text, lines)
        accepted = "".join(text.splitlines(keepends=True)[:lines])
        return len(accepted.encode("utf-16-le")) // 2


def to_event(body: LogEventRequest, select_kind: str | None, texts: Texts) -> Event | None:
    """The Flywheel event a Tabby event stands for; None for one with nothing to record (another
    choice than the one served, or an event type Flywheel has no outcome for)."""
    if body.choice_index != 0:
        return None
    visible_ms = float(body.elapsed) if body.elapsed is not None else None
    fields: dict[str, Any] = {}
    if body.type == "view":
        kind = EventKind.SHOWN
    elif body.type == "select" and select_kind == "line":
        kind = EventKind.PARTIALLY_ACCEPTED
        fields["accepted_chars"] = texts.accept_line(body.completion_id)
    elif body.type == "select":
        kind, fields["final"] = EventKind.ACCEPTED, True
    elif body.type == "dismiss":
        kind, fields["final"] = EventKind.REJECTED, True
    else:
        return None
    return Event(
        event_id=uuid7().hex,
        completion_id=body.completion_id,
        kind=kind,
        client_ts=time.time(),
        visible_ms=visible_ms,
        **fields,
    )


def health(base_model: str, live_version: str, device: str) -> dict[str, Any]:
    """What Tabby's `/v1/health` says; the agent needs `model` and `device` to call itself connected,
    and then asks /v1beta/server_setting."""
    return {
        "model": f"{base_model} ({live_version})",
        "chat_model": None,
        "device": device,
        "arch": "",
        "cpu_info": "",
        "cpu_count": 0,
        "cuda_devices": [],
        "accelerators": [],
        # No Tabby version: the agent skips /v1beta/server_setting for one below 0.9.0, and asks
        # for a name that is no version.
        "version": {"build_date": "", "build_timestamp": "", "git_sha": "", "git_describe": "flywheel"},
        "webserver": None,
    }


# Tabby's agent sends its own anonymous usage data to TabbyML unless the server says not to: a
# Flywheel backend does, since it keeps its users' code on its own machines.
SERVER_SETTING = {"disable_client_side_telemetry": True}
