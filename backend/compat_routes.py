"""Routes for clients that speak another protocol: Tabby's (backend/tabby.py) and OpenAI's
completions (backend/openai_compat.py). Each authenticates with a Flywheel client token
(`Authorization: Bearer …`) and is served by backend/completing.py like Flywheel's own clients.

Both protocols POST to `/v1/completions`; the body tells them apart: Tabby's has `segments`,
OpenAI's has `prompt`. Tabby's events share `/v1/events` with Flywheel's batches: app.py's route
hands a body that is no batch but has a `type` to `tabby_event` here.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from backend import openai_compat, tabby
from backend.completing import serve
from backend.deps import Caller, State, client_only
from backend.state import BackendState
from core.wire import EventsResponse

log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=BaseModel)
router = APIRouter()
# Texts of the completions served to Tabby's clients, for their line accepts.
_tabby_texts = tabby.Texts()


def _inlined(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its definitions written in place: an OpenAPI body cannot point
    into a `$defs` of its own (schemathesis skipped the body as an unresolvable reference)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


_EITHER = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [_inlined(tabby.CompletionRequest), _inlined(openai_compat.CompletionRequest)]
            }
        }
    },
}


@router.post(
    "/v1/completions",
    dependencies=client_only,
    openapi_extra={"requestBody": _EITHER},
    responses={
        200: {
            "description": "Tabby's CompletionResponse, or OpenAI's (events when asked to stream)",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            _inlined(tabby.CompletionResponse),
                            _inlined(openai_compat.CompletionResponse),
                        ]
                    }
                },
                # Each event: a chunk of OpenAI's CompletionResponse as JSON, the last one [DONE].
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "properties": {"data": {"type": "string"}},
                        "required": ["data"],
                    }
                },
            },
        }
    },
)
async def completions(request: Request, state: State, caller: Caller) -> Response:
    body = _json_of(await request.body())
    if isinstance(body, dict) and "segments" in body:
        return await _tabby_completion(_parsed(tabby.CompletionRequest, body), request, state, caller.person)
    if openai_compat.is_request(body):
        parsed = _parsed(openai_compat.CompletionRequest, body)
        return await _openai_completion(parsed, request, state, caller.person)
    raise RequestValidationError(
        [{"type": "missing", "loc": ("body",), "msg": "neither Tabby's (segments) nor OpenAI's (prompt)"}]
    )


async def _tabby_completion(
    body: tabby.CompletionRequest, request: Request, state: BackendState, person: str
) -> Response:
    if body.language and body.language not in state.settings.model.languages:
        # Tabby's plugins ask in every file; a language the model does not serve gets nothing
        # shown and nothing recorded, as Flywheel's own clients do not ask there by default.
        return _json(tabby.CompletionResponse(id=tabby.NOT_SERVED, choices=[]))
    served = await serve(state, tabby.complete_request(body), person, request.is_disconnected)
    choices = [tabby.Choice(index=0, text=served.text)] if served.text else []
    if served.text:
        _tabby_texts.remember(served.completion_id, served.text)
    return _json(tabby.CompletionResponse(id=served.completion_id, choices=choices))


async def _openai_completion(
    body: openai_compat.CompletionRequest, request: Request, state: BackendState, person: str
) -> Response:
    job = openai_compat.complete_request(body, state.settings.model.max_new_tokens)
    served = await serve(state, job, person, request.is_disconnected)
    answer = openai_compat.response(served, state.base_model)
    if body.stream:
        return StreamingResponse(iter(openai_compat.stream(answer)), media_type="text/event-stream")
    return _json(answer)


async def tabby_event(body: dict[str, Any], request: Request, state: BackendState) -> Response:
    """One of Tabby's events, stored as the Flywheel event it stands for. Answered 200 whenever it
    is well formed, as Tabby's server does: one about a completion this backend did not record
    (telemetry off, or the agent's own empty answers) is left out, and logged. The body is the
    route's own EventsResponse (Tabby's agent reads none), so the route answers as documented."""
    parsed = _parsed(tabby.LogEventRequest, body)
    event = tabby.to_event(parsed, request.query_params.get("select_kind"), _tabby_texts)
    if event is None:
        return _json(EventsResponse(stored=0, duplicates=0, refused=[]))
    result = await state.store.store_events([(0, event)], [], received_at=event.client_ts)
    state.metrics.events(result)
    for refused in result.refused:
        log.debug("Tabby event about %s not stored: %s", event.completion_id, refused.reason)
    return _json(result)


@router.get("/v1/health", dependencies=client_only)
@router.post("/v1/health", dependencies=client_only)
async def tabby_health(state: State) -> dict[str, Any]:
    return tabby.health(state.base_model, state.completions.policy.live, state.settings.model.device)


@router.get("/v1beta/server_setting", dependencies=client_only)
async def tabby_server_setting() -> dict[str, Any]:
    return tabby.SERVER_SETTING


@router.get("/v1/models", dependencies=client_only)
async def openai_models(state: State) -> dict[str, Any]:
    return openai_compat.models(state.base_model)


def _json_of(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "body is not JSON"}]
        ) from None


def _parsed(model: type[_M], body: Any) -> _M:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        details = error.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in details]) from None


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")
