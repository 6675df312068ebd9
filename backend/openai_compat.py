"""OpenAI's legacy completions protocol with fill-in-the-middle (`prompt` before the cursor,
`suffix` after it), as Continue's autocomplete and other clients speak it.

Such a client reports nothing back: no shown, accepted or dismissed. Its completions are served by
the same policy and recorded with client "openai"; with no events each one with text closes as
`no_feedback`, reward None (core/rewards.py), so the dashboard counts it and the trainer's feed
(trainable episodes only) never carries it. An abstention scores rewards.abstained, as every
client's does: that reward needs no feedback. A request with `"user": "flywheel:no-telemetry"`
is served and not recorded.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from core.wire import CompleteRequest, CompleteResponse, CompletionContext

CLIENT = "openai"
# OpenAI's request has no telemetry switch; its `user` field, free text, carries this one.
NO_TELEMETRY = "flywheel:no-telemetry"
Text = Annotated[str, Field(max_length=200_000)]


class CompletionRequest(BaseModel):
    """The fields Flywheel uses; the rest (temperature, top_p, n, stop, …) are accepted and left to
    the policy: its own temperature is what its episodes' log-probs are measured under."""

    model: Annotated[str | None, Field(max_length=256)] = None
    # One prompt: a list of one string is accepted too, as OpenAI's API does.
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]
    suffix: Text | None = None
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    stream: bool = False
    user: Annotated[str | None, Field(max_length=256)] = None


class Choice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    # None in a streamed chunk before the last.
    finish_reason: Literal["stop", "length"] | None = "stop"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


def is_request(body: Any) -> bool:
    return isinstance(body, dict) and "prompt" in body


def complete_request(body: CompletionRequest, max_new_tokens: int) -> CompleteRequest:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return CompleteRequest(
        # The protocol names no language or file: both are recorded unknown.
        context=CompletionContext(prefix=prompt, suffix=body.suffix or "", path="", language=""),
        client=CLIENT,
        # The policy's own limit is the most a client may ask for.
        max_new_tokens=min(body.max_tokens, max_new_tokens) if body.max_tokens else None,
        telemetry=body.user != NO_TELEMETRY,
    )


def response(served: CompleteResponse, base_model: str) -> CompletionResponse:
    tokens = len(served.token_logprobs)
    return CompletionResponse(
        id=f"cmpl-{served.completion_id}",
        created=int(time.time()),
        model=f"{base_model}@{served.model_version}",
        choices=[Choice(index=0, text=served.text)],
        # The prompt's length in tokens is the engine's business and not returned to the routes.
        usage=Usage(prompt_tokens=0, completion_tokens=tokens, total_tokens=tokens),
    )


def stream(answer: CompletionResponse) -> list[str]:
    """The answer as server-sent events, for a client that asked to stream: the text in one chunk,
    an empty one that says it finished, then [DONE] (the policy decodes a completion whole before
    it is checked, so there is nothing to send earlier)."""
    text = answer.choices[0].text
    chunks = [
        answer.model_copy(update={"choices": [Choice(index=0, text=text, finish_reason=None)]}),
        answer.model_copy(update={"choices": [Choice(index=0, text="")]}),
    ]
    events = [f"data: {chunk.model_dump_json(exclude={'usage'})}\n\n" for chunk in chunks]
    return [*events, "data: [DONE]\n\n"]


def models(base_model: str) -> dict[str, Any]:
    """`GET /v1/models`: the one model this backend serves."""
    model = {"id": base_model, "object": "model", "created": 0, "owned_by": "flywheel"}
    return {"object": "list", "data": [model]}
