"""The trainer cycle over HTTP, against a small in-process stand-in for the backend's four
trainer endpoints (the real backend is exercised by the end-to-end test)."""

from __future__ import annotations

import email.parser
import email.policy
import json
import tempfile
from pathlib import Path

import httpx
import pytest
import torch
from trainer_support import build_tokenizer, episode, one_thread, prompts, sample, save_tiny_model

from core.config import BackendConfig, Settings, TrainerConfig
from core.wire import (
    ADAPTER_FILES,
    BASE_VERSION,
    CheckpointInfo,
    CheckpointMetadata,
    Episode,
    EpisodesPage,
    ModelInfo,
)
from trainer.checkpoint import adapter_dir
from trainer.client import BackendClient
from trainer.loop import run, run_cycle
from trainer.state import load_state

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
TOKEN = "s3cret"


class StubBackend:
    """Serves the trainer's endpoints from memory, as backend/app.py does from its store."""

    def __init__(self, base_model: str) -> None:
        self.base_model = base_model
        self.live = BASE_VERSION
        self.episodes: list[Episode] = []
        self.checkpoints: dict[str, dict[str, bytes]] = {}
        self.uploads: list[CheckpointMetadata] = []
        self.requests: list[str] = []
        self.fail_uploads = False
        self.promote_on_upload = True
        self.canary: str | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401)
        path = request.url.path.removeprefix("/v1")
        if request.method == "GET" and path == "/model":
            live = self.uploads[int(self.live[1:]) - 1] if self.live != BASE_VERSION else None
            info = ModelInfo(
                base_model=self.base_model,
                live_version=self.live,
                fim="none",
                temperature=1.0,
                canary_version=self.canary,
                min_confidence=live.min_confidence if live else {},
                show_policy=live.show_policy if live else None,
            )
            return httpx.Response(200, json=info.model_dump())
        if request.method == "GET" and path == "/episodes":
            cursor, limit = int(request.url.params["cursor"]), int(request.url.params["limit"])
            page = [e for e in self.episodes if e.seq > cursor][:limit]
            body = EpisodesPage(episodes=page, next_cursor=page[-1].seq if page else cursor)
            return httpx.Response(200, json=body.model_dump())
        if request.method == "POST" and path == "/checkpoints":
            if self.fail_uploads:
                return httpx.Response(500)
            fields = parse_multipart(request)
            meta = CheckpointMetadata.model_validate_json(fields.pop("metadata"))
            assert set(fields) == set(ADAPTER_FILES)
            assert meta.base_model == self.base_model
            version = f"v{len(self.checkpoints) + 1}"
            self.checkpoints[version] = fields
            self.uploads.append(meta)
            # As the backend does: a candidate that failed its gate is recorded, never served.
            refused = meta.gate is not None and not meta.gate.passed
            if self.promote_on_upload and not refused:
                self.live = version
            info = CheckpointInfo(
                version=version,
                state="rejected" if refused else "live",
                parent_version=meta.parent_version,
                created_at=0,
            )
            return httpx.Response(200, json=info.model_dump())
        if request.method == "GET" and path == "/checkpoints":
            listed = [
                CheckpointInfo(
                    version=f"v{i + 1}",
                    state="live",
                    parent_version=m.parent_version,
                    created_at=0,
                    metrics=m.metrics,
                ).model_dump()
                for i, m in enumerate(self.uploads)
            ]
            return httpx.Response(200, json=listed)
        if request.method == "GET" and path.startswith("/checkpoints/"):
            _, _, version, _, name = path.split("/")
            return httpx.Response(200, content=self.checkpoints[version][name])
        return httpx.Response(404)


def parse_multipart(request: httpx.Request) -> dict[str, bytes]:
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.read())
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


@pytest.fixture
def stub(tmp_path: Path) -> StubBackend:
    save_tiny_model(tmp_path / "base")
    return StubBackend(str(tmp_path / "base"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        backend=BackendConfig(url="http://backend.test", token=TOKEN),
        trainer=TrainerConfig(batch_size=4, learning_rate=1e-2, device="cpu"),
    )


def client_for(stub: StubBackend, settings: Settings, **kwargs) -> BackendClient:
    return BackendClient.from_settings(settings, transport=httpx.MockTransport(stub.handle), **kwargs)


def add_episodes(stub: StubBackend, n: int, version: str = BASE_VERSION) -> None:
    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token_id
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stub.base_model).eval()
    if version != BASE_VERSION:
        # The episodes of a version are that version's own samples, as serving records them.
        from peft import PeftModel

        with tempfile.TemporaryDirectory() as adapter:
            for name, content in stub.checkpoints[version].items():
                (Path(adapter) / name).write_bytes(content)
            model = PeftModel.from_pretrained(model, adapter).eval()
    torch.manual_seed(len(stub.episodes))
    prompt = prompts(tokenizer)[len(stub.episodes) % 4]
    for completion, logps in sample(model, prompt, 1.0, eos, max_new_tokens=3, n=n):
        seq = len(stub.episodes) + 1
        reward = 0.75 if completion[0] % 2 == 0 else -0.25
        stub.episodes.append(episode(seq, prompt, completion, logps, reward, model_version=version))


def test_cycles_train_upload_and_continue_from_live(stub: StubBackend, settings: Settings) -> None:
    add_episodes(stub, 8)
    with client_for(stub, settings) as client:
        first = run_cycle(settings, client)
        assert first is not None and first.version == "v1"
        assert (first.parent_version, first.episodes, first.cursor) == (BASE_VERSION, 8, 8)
        assert first.update is not None and (first.update.objective, first.trained_on, first.heldout) == (
            "pg",
            8,
            0,
        )
        meta = stub.uploads[0]
        assert meta.parent_version == BASE_VERSION
        assert meta.metrics["episodes"] == 8
        # The checkpoint carries the report's figures (its duration taken before the upload).
        uploaded = {k: v for k, v in meta.metrics.items() if k != "duration_s"}
        reported = {k: v for k, v in first.metrics().items() if k != "duration_s"}
        assert uploaded == {**reported, "candidate": uploaded["candidate"], "objective": "pg"} | {
            "seq_after": 0,
            "seq_through": 8,
        }
        for key in (
            "loss",
            "pg_loss",
            "kl",
            "kl_parent_max",
            "ratio_mean",
            "clip_frac",
            "mean_reward",
            "duration_s",
        ):
            assert key in meta.metrics
        assert json.loads(stub.checkpoints["v1"]["adapter_config.json"])["peft_type"] == "LORA"
        # The gate ran and its verdict travels with the checkpoint.
        assert meta.gate is not None and meta.gate.passed, meta.gate
        assert {"ppl_base", "ppl_candidate", "degenerate_loops"} <= set(meta.gate.figures)
        state = load_state(settings.trainer_dir)
        assert (state.cursor, state.last_version) == (8, "v1")
        # The uploaded candidate is filed under its version, so v1 going live costs no download.
        assert (adapter_dir(settings.trainer_dir, "v1") / "adapter_model.safetensors").read_bytes() == (
            stub.checkpoints["v1"]["adapter_model.safetensors"]
        )
        assert list((settings.trainer_dir / "candidates").iterdir()) == []

        assert run_cycle(settings, client) is None  # nothing new

        add_episodes(stub, 4, version="v1")
        stub.requests.clear()
        second = run_cycle(settings, client)
        assert second is not None and (second.version, second.parent_version, second.cursor) == (
            "v2",
            "v1",
            12,
        )
        assert not any("/files/" in r for r in stub.requests)
        assert stub.uploads[1].parent_version == "v1"
        assert stub.checkpoints["v2"] != stub.checkpoints["v1"]
        # Continuing v1 on its own samples: the first importance ratios are ~1.
        assert 0.5 < stub.uploads[1].metrics["ratio_mean"] < 2.0


def test_an_update_the_gate_refuses_still_ships_its_floors_on_the_live_weights(
    stub: StubBackend, settings: Settings
) -> None:
    from safetensors.torch import load

    from core.confidence import LINE_START, confidence
    from trainer.withholding import FLOORS

    add_episodes(stub, 40)
    # Shown at line starts; the least sure ones (below the first floor that withholds any) were
    # dismissed, the others taken.
    confidences = [confidence(e.token_logprobs) for e in stub.episodes]
    first_step = min(f for f in FLOORS if f is not None and f > min(confidences))
    stub.episodes = [
        e.model_copy(
            update={
                "text": "abc",
                "place": LINE_START,
                "outcome": "rejected" if c < first_step else "accepted",
                "reward": -0.25 if c < first_step else 0.75,
            }
        )
        for e, c in zip(stub.episodes, confidences, strict=True)
    ]
    # Any change of perplexity fails the gate.
    refusing = settings.model_copy(deep=True)
    refusing.trainer.gate.max_ppl_increase = -1.0
    refusing.trainer.floor_min_shown = 20
    with client_for(stub, refusing) as client:
        result = run_cycle(refusing, client)
    assert result is not None and (result.version, result.state) == ("v1", "rejected")
    assert (result.floors_version, result.floors_state) == ("v2", "live")
    assert result.floors is not None and result.floors.min_confidence == {LINE_START: first_step}
    update, floors = stub.uploads
    assert not update.gate.passed and update.min_confidence == {LINE_START: first_step}
    assert floors.gate.passed and floors.metrics["floors_only"] == 1.0
    assert floors.metrics["min_confidence_line_start"] == first_step  # for the dashboard
    assert (floors.parent_version, floors.min_confidence) == (BASE_VERSION, {LINE_START: first_step})
    # The live weights (the base model's: an adapter that adds nothing), not the refused update's.
    shipped = load(stub.checkpoints["v2"]["adapter_model.safetensors"])
    refused = load(stub.checkpoints["v1"]["adapter_model.safetensors"])
    assert all(not t.any() for name, t in shipped.items() if "lora_B" in name)
    assert any(t.any() for name, t in refused.items() if "lora_B" in name)
    assert stub.live == "v2" and load_state(refusing.trainer_dir).cursor == 40


def test_a_cycle_fits_the_show_policy_and_ships_it_in_the_checkpoint(
    stub: StubBackend, settings: Settings
) -> None:
    import random

    from core.show_policy import FILTER_FEATURES
    from core.wire import ServingDecision

    add_episodes(stub, 60)
    rng = random.Random(0)

    def decision(confidence: float, shown: bool = True) -> ServingDecision:
        features = dict.fromkeys(FILTER_FEATURES, 0.0) | {"place_in_word": 1.0, "confidence": confidence}
        return ServingDecision(rule="floors", features=features, shown=shown)

    # Served under the floors (none): taken where the model was sure, dismissed elsewhere.
    shown = []
    for e in stub.episodes:
        c = rng.uniform(-2.5, 0.0)
        update = {"text": "abc", "outcome": "accepted" if c > -1 else "rejected", "decision": decision(c)}
        shown.append(e.model_copy(update={**update, "reward": 0.75 if c > -1 else -0.25}))
    # And requests nothing was shown for: no update trains on them, the policy's evidence counts them.
    withheld = [
        e.model_copy(
            update={
                "seq": 60 + i,
                "completion_id": f"w{i}",
                "completion_ids": [],
                "token_logprobs": [],
                "outcome": "abstained",
                "reward": 0.0,
                "decision": decision(-3.0, shown=False),
            }
        )
        for i, e in enumerate(stub.episodes[:10], start=1)
    ]
    stub.episodes = shown + withheld
    settings.trainer.show_policy_min_shown = 20
    # Any change of perplexity fails the gate: the policy, fitted on the live weights' outcomes,
    # ships alone on them.
    settings.trainer.gate.max_ppl_increase = -1.0
    with client_for(stub, settings) as client:
        result = run_cycle(settings, client)
    assert result is not None and result.show_policy is not None
    fitted = result.show_policy
    assert fitted.changed and fitted.policy is not None and fitted.evidence > 50
    assert fitted.policy.filter.probability(decision(-0.2).features) >= fitted.policy.threshold
    assert fitted.policy.filter.probability(decision(-2.2).features) < fitted.policy.threshold
    update, alone = stub.uploads
    # It travels in the checkpoint like the floors, its figures with it, and the gate judged it on
    # the held-out episodes.
    assert update.show_policy == fitted.policy
    assert update.metrics["show_threshold"] == fitted.policy.threshold
    assert update.metrics["show_evidence"] == fitted.evidence
    assert update.gate is not None and update.gate.figures["show_policy_passed"] == 1.0
    assert "show_policy_heldout_kept_chars_upper" in update.gate.figures
    assert result.episodes == 60 and result.dropped["withheld"] == 10
    assert (result.state, result.floors_version, result.floors_state) == ("rejected", "v2", "live")
    assert alone.show_policy == fitted.policy and alone.metrics["floors_only"] == 1.0
    assert alone.metrics["show_threshold"] == fitted.policy.threshold
    # The next cycle starts from it: serving now decides with it.
    with client_for(stub, settings) as client:
        assert client.model_info().show_policy == fitted.policy


def test_live_adapter_is_downloaded_when_not_cached(
    stub: StubBackend, settings: Settings, tmp_path: Path
) -> None:
    add_episodes(stub, 4)
    # A fresh Settings: model_copy would carry over the cached state_dir.
    other = Settings(data_dir=tmp_path / "elsewhere", backend=settings.backend, trainer=settings.trainer)
    with client_for(stub, other) as client:
        run_cycle(other, client)  # another trainer produced v1
    add_episodes(stub, 4, version="v1")
    with client_for(stub, settings) as client:
        result = run_cycle(settings, client)
    assert result is not None and result.parent_version == "v1"
    assert sum("/checkpoints/v1/files/" in r for r in stub.requests) == len(ADAPTER_FILES)
    assert (adapter_dir(settings.trainer_dir, "v1") / "adapter_config.json").read_bytes() == (
        stub.checkpoints["v1"]["adapter_config.json"]
    )


def test_failed_upload_keeps_the_cursor_and_the_saved_candidate(
    stub: StubBackend, settings: Settings
) -> None:
    add_episodes(stub, 4)
    stub.fail_uploads = True
    with client_for(stub, settings, retries=0) as client:
        with pytest.raises(httpx.HTTPStatusError):
            run_cycle(settings, client)
        state = load_state(settings.trainer_dir)
        assert state.cursor == 0 and state.pending_candidate is not None
        # The whole candidate was saved before the upload: the next run sends it without retraining.
        assert [p.name for p in (settings.trainer_dir / "candidates").iterdir()] == [state.pending_candidate]
        stub.fail_uploads = False
        assert run_cycle(settings, client) is None  # the pending upload went; no newer episodes
    state = load_state(settings.trainer_dir)
    assert (state.cursor, state.last_version, state.pending_candidate) == (4, "v1", None)
    assert len(stub.uploads) == 1 and stub.uploads[0].metrics["candidate"]
    assert list((settings.trainer_dir / "candidates").iterdir()) == []


def test_a_pending_upload_that_arrived_is_not_sent_twice(stub: StubBackend, settings: Settings) -> None:
    add_episodes(stub, 4)
    with client_for(stub, settings) as client:
        run_cycle(settings, client)
        # As if killed after the backend stored it but before the cursor was saved.
        state = load_state(settings.trainer_dir)
        state.pending_candidate, state.pending_cursor = stub.uploads[0].metrics["candidate"], 4
        state.cursor = 0
        from trainer.state import save_state

        save_state(settings.trainer_dir, state)
        assert run_cycle(settings, client) is None
    assert len(stub.uploads) == 1
    assert load_state(settings.trainer_dir).cursor == 4


def test_too_few_episodes_changes_nothing(stub: StubBackend, settings: Settings) -> None:
    add_episodes(stub, 2)
    with client_for(stub, settings) as client:
        assert run_cycle(settings, client, min_episodes=3) is None
    assert not (settings.trainer_dir / "state.json").exists()
    assert stub.uploads == []


def test_no_new_candidate_while_a_canary_is_judged(stub: StubBackend, settings: Settings) -> None:
    add_episodes(stub, 8)
    stub.canary = "v9"
    with client_for(stub, settings) as client:
        assert run_cycle(settings, client) is None
        assert stub.uploads == [] and load_state(settings.trainer_dir).cursor == 0
        # The verdict is in: the episodes gathered meanwhile are trained on.
        stub.canary = None
        result = run_cycle(settings, client)
    assert result is not None and result.episodes == 8
    assert len(stub.uploads) == 1


def test_untrainable_episodes_are_stepped_over(stub: StubBackend, settings: Settings) -> None:
    add_episodes(stub, 2)
    first, second = stub.episodes
    first.token_logprobs = first.token_logprobs[:-1]
    second.token_logprobs = [0.5 for _ in second.token_logprobs]
    with client_for(stub, settings) as client:
        result = run_cycle(settings, client)
    assert result is not None and result.version is None
    assert result.dropped == {"logprob_length": 1, "bad_logprob": 1}
    assert load_state(settings.trainer_dir).cursor == 2
    assert stub.uploads == []


def test_episodes_are_pulled_page_by_page(stub: StubBackend, settings: Settings) -> None:
    add_episodes(stub, 7)
    with client_for(stub, settings) as client:
        episodes, cursor = client.all_episodes(2, page_size=2)
    assert [e.seq for e in episodes] == [3, 4, 5, 6, 7]
    assert cursor == 7


def test_run_once(stub: StubBackend, settings: Settings) -> None:
    with client_for(stub, settings) as client:
        assert run(settings, once=True, client=client) == 0  # no episodes: nothing to do
        add_episodes(stub, 3)
        assert run(settings, once=True, client=client) == 0
    assert stub.uploads and load_state(settings.trainer_dir).cursor == 3


def test_run_once_reports_an_unreachable_backend(settings: Settings) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = BackendClient.from_settings(settings, transport=httpx.MockTransport(refuse), retries=0)
    assert run(settings, once=True, client=client) == 1


def test_connection_errors_are_retried(stub: StubBackend, settings: Settings) -> None:
    failures = [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]

    def flaky(request: httpx.Request) -> httpx.Response:
        if failures:
            raise failures.pop(0)
        return stub.handle(request)

    client = BackendClient.from_settings(settings, transport=httpx.MockTransport(flaky), backoff_s=0.0)
    assert client.model_info().live_version == BASE_VERSION


def test_continuous_mode_waits_for_min_episodes_and_stops_on_ctrl_c(
    stub: StubBackend, settings: Settings
) -> None:
    settings.trainer.min_episodes = 4
    settings.trainer.poll_s = 0.0
    settings.trainer.interval_s = 3600.0
    add_episodes(stub, 2)
    polls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        if request.url.path == "/v1/model":
            polls += 1
            if polls == 3:
                add_episodes(stub, 2)  # now 4 are waiting: the next cycle trains
            if polls == 5:
                raise KeyboardInterrupt
        return stub.handle(request)

    client = BackendClient.from_settings(settings, transport=httpx.MockTransport(handle))
    assert run(settings, once=False, client=client) == 0
    assert len(stub.uploads) == 1
    assert stub.uploads[0].metrics["episodes"] == 4
    assert load_state(settings.trainer_dir).cursor == 4


def test_the_next_cycle_trains_on_the_episodes_the_gate_held_out(
    stub: StubBackend, settings: Settings
) -> None:
    """Held out for one cycle's reward check, then trained on in the next: not left unlearned."""
    add_episodes(stub, 40)
    with client_for(stub, settings) as client:
        first = run_cycle(settings, client)
        assert first is not None and first.update is not None and first.heldout > 0
        assert first.update.figures["heldout_carried"] == 0
        add_episodes(stub, 4)
        second = run_cycle(settings, client)
        assert second is not None and second.update is not None
        assert second.update.figures["heldout_carried"] == first.heldout
        assert second.trained_on == 4 + first.heldout
        assert stub.uploads[-1].metrics["heldout_carried"] == first.heldout
        # Once: the cycle after that trains on its own episodes only.
        add_episodes(stub, 4)
        third = run_cycle(settings, client)
        assert third is not None and third.update is not None
        assert third.update.figures["heldout_carried"] == 0 and third.trained_on == 4
