"""Serving one completion, whichever protocol asked: Flywheel's own (/v1/complete), Tabby's or
OpenAI's (backend/compat_routes.py). Each builds a CompleteRequest, naming its kind of client, and
gets the same policy, the same recording and the same metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from uuid6 import uuid7

from backend.completions import Request as PolicyRequest
from backend.completions import Sample
from backend.engine import ClientGone, EngineUnavailable
from backend.state import BackendState
from core.wire import CompleteRequest, CompleteResponse

_FLOORS_NEED_EVALUATION = "show_rule 'floors' needs evaluation: true (a side-by-side of the rules)"


async def serve(
    state: BackendState, body: CompleteRequest, person: str, gone: Callable[[], Awaitable[bool]]
) -> CompleteResponse:
    """Complete `body` for `person` (the token's, never the client's word: caps and canary count
    people) and keep it for learning when its telemetry is on. 503 while no model serves, 499
    when the client hung up before decoding; 422 for show_rule "floors" outside an evaluation."""
    if body.show_rule == "floors" and not body.evaluation:
        # Every trained episode must have been served under its version's own rule. FastAPI's own
        # 422, as the schema documents it: the error located in the field.
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "show_rule"), "msg": _FLOORS_NEED_EVALUATION}]
        )
    started = time.perf_counter()
    job = PolicyRequest(
        body.context.prefix,
        body.context.suffix,
        body.max_new_tokens,
        person,
        body.context.language,
        body.signals,
        learned=body.show_rule == "version",
    )
    try:
        with state.metrics.in_flight.track_inprogress():
            sample = await state.completions.complete(job, gone=gone)
    except EngineUnavailable as error:
        # The editor may simply ask again: a new model process is starting.
        raise HTTPException(503, f"model unavailable: {error}") from error
    except ClientGone as error:  # dropped before decoding: nobody reads this answer
        raise HTTPException(499, "client closed the request") from error
    latency_ms = (time.perf_counter() - started) * 1000
    completion_id = uuid7().hex
    if body.telemetry:
        await _record(state, body, person, completion_id, sample, latency_ms)
    called = sample.decision is None or sample.decision.called
    state.metrics.completed(sample.model_version, bool(sample.text), latency_ms, sample.first_token_s, called)
    return CompleteResponse(
        completion_id=completion_id,
        text=sample.text,
        model_version=sample.model_version,
        token_logprobs=sample.token_logprobs,
        latency_ms=latency_ms,
    )


async def _record(
    state: BackendState,
    body: CompleteRequest,
    person: str,
    completion_id: str,
    sample: Sample,
    latency_ms: float,
) -> None:
    """Keep a served completion for learning. Only with the user's telemetry on: off, nothing of
    their code, no text and no episode is kept, and events naming the completion are refused."""
    await state.store.record_completion(
        completion_id=completion_id,
        user_id=person,
        model_version=sample.model_version,
        context=body.context.model_dump(),
        prompt_ids=sample.prompt_ids,
        completion_ids=sample.completion_ids,
        token_logprobs=sample.token_logprobs,
        temperature=state.completions.policy.temperature,
        text=sample.text,
        created_at=time.time(),
        latency_ms=latency_ms,
        evaluation=body.evaluation,
        client=body.client,
        language=body.context.language,
        decision=sample.decision,
    )
