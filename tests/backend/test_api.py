"""The backend over real HTTP on loopback, with a real model and a real SQLite file."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningBackend, bearer, start_backend, stop_backend

from core.wire import ADAPTER_FILES, MAX_EVENTS_PER_BATCH, CompleteResponse, EpisodesPage


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBackend]:
    running = start_backend(tiny_model_dir, tmp_path_factory.mktemp("api") / "state")
    yield running
    stop_backend(running)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter for the tiny model, with non-zero weights so it changes the policy."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, lora_alpha=8)
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    output = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(output)
    return output


def complete(
    server: RunningBackend, prefix: str, suffix: str = "", headers: dict[str, str] | None = None
) -> httpx.Response:
    """A completion asked for with the local client token (or `headers`)."""
    return httpx.post(
        f"{server.url}/v1/complete",
        json={"context": {"prefix": prefix, "suffix": suffix, "path": "a.py"}},
        headers=server.client if headers is None else headers,
        timeout=60,
    )


def upload(server: RunningBackend, adapter: Path, base_model: str) -> httpx.Response:
    files = {name: (name, (adapter / name).read_bytes()) for name in ADAPTER_FILES}
    metadata = json.dumps({"base_model": base_model, "parent_version": "base", "metrics": {"loss": 0.1}})
    return httpx.post(
        f"{server.url}/v1/checkpoints",
        data={"metadata": metadata},
        files=files,
        headers=server.admin,
        timeout=60,
    )


def test_completion_is_recorded_with_its_sampled_tokens(server: RunningBackend) -> None:
    response = complete(server, "import os\n\ndef main():\n    path = os.")
    assert response.status_code == 200
    body = CompleteResponse.model_validate(response.json())
    assert body.model_version == "base"
    assert body.token_logprobs and all(lp <= 0 for lp in body.token_logprobs)
    assert "\n" not in body.text  # mid-line request: the rest of the line only
    # Abstentions finalize at once; a shown completion waits for its events, so check the store via
    # an accept-and-finalize round trip.
    event = {"event_id": uuid.uuid4().hex, "completion_id": body.completion_id, "client_ts": 1.0}
    kind = "accepted" if body.text else "shown"
    events = [dict(event, kind=kind, visible_ms=800, final=True)]
    stored = httpx.post(f"{server.url}/v1/events", json={"events": events}, headers=server.client)
    assert stored.json()["stored"] == 1
    episode = wait_for_episode(server, body.completion_id)
    assert len(episode["completion_ids"]) == len(body.token_logprobs)
    assert episode["token_logprobs"] == pytest.approx(body.token_logprobs)


def wait_for_episode(server: RunningBackend, completion_id: str, timeout_s: float = 20.0) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = httpx.get(f"{server.url}/v1/episodes", params={"cursor": 0}, headers=server.admin)
        page = EpisodesPage.model_validate(answer.json())
        for episode in page.episodes:
            if episode.completion_id == completion_id:
                return episode.model_dump()
        time.sleep(0.2)
    raise AssertionError(f"episode {completion_id} never finalized")


def test_evaluation_completions_never_reach_the_trainers_episodes(server: RunningBackend) -> None:
    """A completion asked for as part of an evaluation is scored like any other, but the trainer's
    page leaves it out; the simulator reads it back with include_evaluation. An ordinary one is fed."""
    ids = {}
    for evaluation in (True, False):
        body = {"context": {"prefix": "total = ", "suffix": "", "path": "a.py"}, "evaluation": evaluation}
        answer = httpx.post(f"{server.url}/v1/complete", json=body, headers=server.client, timeout=60)
        ids[evaluation] = answer.json()["completion_id"]
        event = {"event_id": uuid.uuid4().hex, "completion_id": ids[evaluation], "client_ts": 1.0}
        events = [dict(event, kind="rejected", visible_ms=800, final=True)]
        stored = httpx.post(f"{server.url}/v1/events", json={"events": events}, headers=server.client)
        assert stored.json()["stored"] == 1
    everything = {e["completion_id"]: e for e in wait_for_episodes(server, set(ids.values()))}
    assert (everything[ids[True]]["evaluation"], everything[ids[False]]["evaluation"]) == (True, False)

    answer = httpx.get(f"{server.url}/v1/episodes", params={"cursor": 0, "limit": 5000}, headers=server.admin)
    fed = {e.completion_id for e in EpisodesPage.model_validate(answer.json()).episodes}
    assert ids[False] in fed
    assert ids[True] not in fed


def wait_for_episodes(server: RunningBackend, completion_ids: set[str], timeout_s: float = 20.0) -> list[Any]:
    """The episodes of `completion_ids`, evaluation ones included, once all are finalized."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        params = {"cursor": 0, "limit": 5000, "include_evaluation": True}
        answer = httpx.get(f"{server.url}/v1/episodes", params=params, headers=server.admin)
        found = [e for e in answer.json()["episodes"] if e["completion_id"] in completion_ids]
        if len(found) == len(completion_ids):
            return found
        time.sleep(0.2)
    raise AssertionError(f"episodes {completion_ids} never finalized")


def test_bad_events_are_refused_and_good_ones_kept(server: RunningBackend) -> None:
    completion_id = complete(server, "x = ").json()["completion_id"]
    good = {"event_id": uuid.uuid4().hex, "completion_id": completion_id, "kind": "shown", "client_ts": 2.0}
    batch = [good, {"event_id": "short", "kind": "nonsense"}, dict(good), "not an object"]
    body = httpx.post(f"{server.url}/v1/events", json={"events": batch}, headers=server.client).json()
    assert body["stored"] == 1
    assert body["duplicates"] == 1
    assert [refusal["index"] for refusal in body["refused"]] == [1, 3]
    assert all(refusal["reason"] for refusal in body["refused"])
    again = httpx.post(f"{server.url}/v1/events", json={"events": [good]}, headers=server.client).json()
    assert again == {"stored": 0, "duplicates": 1, "refused": []}


def test_a_body_that_is_not_a_batch_is_refused_whole(server: RunningBackend) -> None:
    url = f"{server.url}/v1/events"
    as_json = {"content-type": "application/json", **server.client}
    not_json = httpx.post(url, content=b"{events: [", headers=as_json)
    assert not_json.status_code == 422
    assert "JSON" in not_json.text
    assert httpx.post(url, json={"event": []}, headers=server.client).status_code == 422
    too_many = httpx.post(url, json={"events": [{}] * (MAX_EVENTS_PER_BATCH + 1)}, headers=server.client)
    assert too_many.status_code == 422
    assert str(MAX_EVENTS_PER_BATCH) in too_many.text


def test_checkpoint_upload_swaps_the_served_version(
    server: RunningBackend, adapter_dir: Path, tiny_model_dir: Path
) -> None:
    wrong_base = upload(server, adapter_dir, "someone/else")
    assert wrong_base.status_code == 400
    assert "base model" in wrong_base.json()["detail"]

    accepted = upload(server, adapter_dir, str(tiny_model_dir))
    assert accepted.status_code == 200, accepted.text
    version = accepted.json()["version"]
    assert accepted.json()["state"] == "live"
    assert httpx.get(f"{server.url}/healthz").json()["live_version"] == version
    assert complete(server, "def f(x):\n    return x").json()["model_version"] == version

    files = f"{server.url}/v1/checkpoints/{version}/files"
    served = httpx.get(f"{files}/adapter_model.safetensors", headers=server.admin)
    assert served.content == (adapter_dir / "adapter_model.safetensors").read_bytes()
    for name in ("..%2Fflywheel.sqlite3", "adapter_config.json%2F..%2F..%2Fflywheel.sqlite3"):
        assert httpx.get(f"{files}/{name}", headers=server.admin).status_code == 404
    with server.dashboard() as browser:
        assert version in browser.get("/admin").text


def test_upload_that_is_not_an_adapter_is_refused(server: RunningBackend, tiny_model_dir: Path) -> None:
    metadata = json.dumps({"base_model": str(tiny_model_dir), "parent_version": "base"})
    files = {
        "adapter_config.json": ("a", b'{"peft_type": "LORA"}'),
        "adapter_model.safetensors": ("b", b"junk"),
    }
    response = httpx.post(
        f"{server.url}/v1/checkpoints", data={"metadata": metadata}, files=files, headers=server.admin
    )
    assert response.status_code == 400
    assert "safetensors" in response.json()["detail"]


def test_client_token_is_required_when_configured(tiny_model_dir: Path, tmp_path: Path) -> None:
    guarded = start_backend(tiny_model_dir, tmp_path / "state", FLYWHEEL_BACKEND__TOKEN="s3cret")
    try:
        assert complete(guarded, "x = ", headers={}).status_code == 401
        assert complete(guarded, "x = ", headers=bearer("wrong")).status_code == 401
        assert complete(guarded, "x = ", headers=bearer("s3cret")).status_code == 200
        # A configured token is somebody: no local tokens are made beside it.
        assert not (guarded.data_dir / "tokens").exists()
        assert httpx.get(f"{guarded.url}/healthz").status_code == 200
    finally:
        stop_backend(guarded)
