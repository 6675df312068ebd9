"""Batched serving on a real model: exact log-probs under left padding, mixed-adapter batches and
requests joining a running decoding loop; the product's rules (routing, healing, stops, the cut and
the floor) decided above the engine (backend/completions.py) and acted on in its step loop."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch
from conftest import make_adapter

from backend.completions import Cut, Request, Sample, finish, plan, version_rules
from backend.decoding import Decoding, sample_rows
from backend.engine import EngineRequest, Generation
from backend.routing import Routing, in_canary
from backend.serving import Policy, PreparedAdapter, prepare_adapter
from core.confidence import IN_WORD, LEADING_TOKENS, PLACES, confidence, cursor_place
from core.prompts import build_prompt_ids

PREFIXES = [
    "import os\n\ndef main():\n    path = os.",
    "def add(a, b):\n    return",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
    "for i in range(",
    "import json\n\ndata = json.loads(text)\nfor key in data:\n",
]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[PreparedAdapter]:
    return [
        prepare_adapter(version, make_adapter(tiny_model_dir, tmp_path_factory.mktemp(version), seed, 0.3))
        for seed, version in ((1, "v1"), (2, "v2"))
    ]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> Policy:
    return Policy(str(tiny_model_dir), temperature=1.0, max_new_tokens=12, device="cpu")


@pytest.fixture
def policy(loaded: Policy, adapters: list[PreparedAdapter]) -> Policy:
    for adapter in adapters:
        loaded.install(adapter)
    return loaded


@pytest.fixture
def routing(policy: Policy) -> Routing:
    routing = Routing()
    for version in policy.installed():
        routing.add(version)
    return routing


def teacher_forced(policy: Policy, version: str, prompt: list[int], completion: list[int]) -> list[float]:
    """Log-probs of `completion` after `prompt`, one unpadded forward pass under `version`'s adapter."""
    ids = torch.tensor([prompt + completion])
    model = policy.model
    model.set_adapter(version) if version != "base" else None
    with torch.no_grad():
        if version == "base":
            with model.disable_adapter():
                logits = model(input_ids=ids).logits[0]
        else:
            logits = model(input_ids=ids).logits[0]
    logprobs = torch.log_softmax(logits.float() / policy.temperature, dim=-1)
    return [float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(completion)]


def decode_all(policy: Policy, requests: list[EngineRequest]) -> list[Generation]:
    """The requests decoded together from the first step to the last; in request order."""
    decoding = Decoding(policy)
    done = dict(decoding.join(list(enumerate(requests))))
    while decoding.size:
        done.update(decoding.step())
    return [done[i] for i in range(len(requests))]


def asked(
    routing: Routing, requests: list[Request], cuts: dict[str, Cut] | None = None
) -> list[EngineRequest]:
    """What the engine is asked: each request under the version routed to, with its rules."""
    versions = [routing.version_for(r.user_id) for r in requests]
    return [plan(r, v, (cuts or {}).get(v, Cut())) for r, v in zip(requests, versions, strict=True)]


def serve_all(
    policy: Policy, routing: Routing, requests: list[Request], cuts: dict[str, Cut] | None = None
) -> list[Sample]:
    """The requests served together: routed and planned, decoded, finished; in request order."""
    planned = asked(routing, requests, cuts)
    return [finish(a, g) for a, g in zip(planned, decode_all(policy, planned), strict=True)]


def engine_requests(requests: list[Request], version: str) -> list[EngineRequest]:
    return [plan(r, version, Cut()) for r in requests]


def users_for(routing: Routing, canary: bool, count: int) -> list[str]:
    users = (f"user-{n}" for n in range(10_000))
    return [u for u in users if in_canary(u, routing.canary_share) == canary][:count]


def test_batched_rows_keep_exact_logprobs_under_left_padding(policy: Policy, routing: Routing) -> None:
    routing.route("v1", None, 0.0)
    torch.manual_seed(0)
    samples = serve_all(policy, routing, [Request(p, "", None, "someone") for p in PREFIXES])
    assert len(samples) == len(PREFIXES)
    assert len({len(s.prompt_ids) for s in samples}) > 1  # prompts of different lengths were padded
    for sample in samples:
        assert sample.model_version == "v1"
        assert sample.completion_ids, "every row samples at least one token"
        expected = teacher_forced(policy, "v1", sample.prompt_ids, sample.completion_ids)
        assert sample.token_logprobs == pytest.approx(expected, abs=2e-4)
        # Padding never leaks into a completion: nothing after the row's own stop.
        assert policy.pad_token_id not in sample.completion_ids[:-1]


def test_canary_and_live_rows_share_a_batch_each_under_its_adapter(policy: Policy, routing: Routing) -> None:
    routing.route("v1", "v2", 0.5)
    canary_users = users_for(routing, True, 3)
    live_users = users_for(routing, False, 3)
    requests = [
        Request(PREFIXES[i % len(PREFIXES)], "", None, u) for i, u in enumerate(canary_users + live_users)
    ]
    torch.manual_seed(1)
    samples = serve_all(policy, routing, requests)
    assert [s.model_version for s in samples] == ["v2"] * 3 + ["v1"] * 3
    for sample in samples:
        expected = teacher_forced(policy, sample.model_version, sample.prompt_ids, sample.completion_ids)
        assert sample.token_logprobs == pytest.approx(expected, abs=2e-4)
        other = "v1" if sample.model_version == "v2" else "v2"
        # The adapters really differ, so matching one proves the row ran under it.
        assert teacher_forced(policy, other, sample.prompt_ids, sample.completion_ids) != pytest.approx(
            expected, abs=2e-4
        )


def test_routing_is_sticky_and_unused_adapters_are_freed(policy: Policy, routing: Routing) -> None:
    routing.route("v1", "v2", 0.3)
    users = [f"u{n}" for n in range(2000)]
    first = [routing.version_for(u) for u in users]
    assert first == [routing.version_for(u) for u in users]
    assert 0.25 < first.count("v2") / len(users) < 0.35
    routing.route("v2", None, 0.0)
    assert routing.unused() == ["v1"]
    for version in routing.unused():
        routing.removed(version)
        policy.remove(version)
    policy.prune()
    assert policy.installed() == {"v2"}
    samples = serve_all(
        policy, routing, [Request(PREFIXES[0], "", 4, "x"), Request(PREFIXES[1], "", None, "y")]
    )
    assert [s.model_version for s in samples] == ["v2", "v2"]
    assert len(samples[0].completion_ids) <= 4  # each row keeps its own token cap


def test_a_version_routed_away_is_unused_only_once_its_requests_are_answered() -> None:
    routing = Routing()
    for version in ("v1", "v2"):
        routing.add(version)
    routing.route("v1", None, 0.0)
    assert routing.take("ana") == "v1"
    routing.route("v2", None, 0.0)
    assert routing.unused() == []  # ana's request is still on its way under v1
    assert routing.take("ben") == "v2"
    assert routing.give_back("v1") is True
    assert routing.unused() == ["v1"]
    assert routing.give_back("v2") is False
    with pytest.raises(ValueError, match="not installed"):
        routing.route("v3", None, 0.0)


def test_requests_joining_a_running_loop_keep_exact_logprobs(policy: Policy, routing: Routing) -> None:
    """Rows that join mid-decoding are spliced into the cache (padded to a common length) without
    changing anyone's distribution: every row's log-probs equal an unpadded forward pass's."""
    routing.route("v1", "v2", 0.5)
    users = users_for(routing, True, 2) + users_for(routing, False, 3)
    first = asked(routing, [Request(PREFIXES[1], "", 40, users[0]), Request(PREFIXES[3], "", 40, users[2])])
    # Sampling decides when rows end: seeds until the first rows are still decoding after 3 steps.
    for seed in range(8):
        torch.manual_seed(seed)
        decoding = Decoding(policy)
        done = dict(decoding.join(list(enumerate(first))))
        for _ in range(3):
            done.update(decoding.step())
        if decoding.size:
            break
    assert decoding.size > 0, "the first rows are still decoding when the others join"
    assert decoding.can_join()
    later = [Request(PREFIXES[0], "", 12, users[1]), Request(PREFIXES[2], "", 12, users[3])]
    later.append(Request(PREFIXES[4], "", 12, users[4]))
    done.update(decoding.join(list(enumerate(asked(routing, later), start=2))))
    steps_together = 0
    while decoding.size:
        steps_together += decoding.size > 1
        done.update(decoding.step())
    assert steps_together > 0
    assert sorted(done) == [0, 1, 2, 3, 4]
    for generation in done.values():
        expected = teacher_forced(
            policy, generation.version, generation.prompt_ids, generation.completion_ids
        )
        assert generation.token_logprobs == pytest.approx(expected, abs=2e-4)
    assert [done[i].version for i in range(5)] == ["v2", "v1", "v2", "v1", "v1"]


@pytest.mark.parametrize(
    ("prefix", "healed"),
    [("def f(a):\n    ", "    "), ("import os\nimport sy", " sy"), ("def f(a):\n    ret", "    ret")],
)
def test_the_prompt_stops_before_the_text_being_typed_and_decoding_rewrites_it(
    policy: Policy, routing: Routing, prefix: str, healed: str
) -> None:
    routing.route("v1", None, 0.0)
    torch.manual_seed(0)
    requests = [Request(prefix, "", 12, f"u{n}") for n in range(16)]
    assert {r.healed for r in asked(routing, requests)} == {healed}  # decided above the engine
    samples = serve_all(policy, routing, requests)
    healed_prompt = build_prompt_ids(
        policy.tokenizer, policy.fim, prefix.removesuffix(healed), "", policy.context_tokens
    )
    abstained = 0
    for sample in samples:
        assert sample.prompt_ids == healed_prompt
        written = policy.tokenizer.decode(sample.completion_ids, skip_special_tokens=True)
        if sample.completion_ids[0] == policy.eos_token_id:
            abstained += 1
            continue
        # Every sample spells out the healed text first; what is shown is what comes after it.
        assert written.startswith(healed), written
        assert written.startswith(healed + sample.text)
        # The recorded log-probs are the model's own, unrestricted: what the trainer recomputes.
        expected = teacher_forced(policy, "v1", sample.prompt_ids, sample.completion_ids)
        assert sample.token_logprobs == pytest.approx(expected, abs=2e-4)
    assert abstained < len(samples)


def test_a_loop_that_never_empties_attends_only_over_its_rows(policy: Policy) -> None:
    """Under steady traffic the batch never empties: columns that are padding for every row left
    are dropped, so a step attends over the longest row and no more, and log-probs stay exact."""
    shrank = False
    # Sampling decides when rows end; a few seeds make sure the long row leaves before the rest.
    for seed in range(8):
        torch.manual_seed(seed)
        decoding = Decoding(policy)
        # The longest prompt, and short ones joining after it: once it leaves, its columns can go.
        done = dict(decoding.join([(0, plan(Request(PREFIXES[2], "", 10, "long"), "v1", Cut()))]))
        observed = []
        for turn in range(1, 13):
            joining = plan(Request(PREFIXES[1], "", 6, f"u{turn}"), "v1", Cut())
            done.update(decoding.join([(turn, joining)]))
            for _ in range(2):
                done.update(decoding.step())
                rows = decoding._batch.rows if decoding._batch else []
                assert decoding.columns == max((len(row.prompt) + len(row.tokens) for row in rows), default=0)
                observed.append(decoding.columns)
        while decoding.size:
            done.update(decoding.step())
        assert sorted(done) == list(range(13))
        for generation in done.values():
            expected = teacher_forced(policy, "v1", generation.prompt_ids, generation.completion_ids)
            assert generation.token_logprobs == pytest.approx(expected, abs=2e-4)
        shrank = any(later < earlier for earlier, later in pairwise(observed))
        if shrank:
            break
    assert shrank, "no run dropped a column"


def test_an_adapter_in_use_is_freed_only_when_its_rows_are_done(policy: Policy) -> None:
    # Sampling decides whether a row ends at its first token: seeds until one goes on (a row on
    # its own ends at its first token only if that token ends it, so one of a few seeds goes on).
    for seed in range(8):
        torch.manual_seed(seed)
        decoding = Decoding(policy)
        decoding.join([(0, plan(Request(PREFIXES[2], "", 12, "someone"), "v1", Cut()))])
        if decoding.size:
            break
    assert decoding.size == 1, "no seed left a row decoding after its first token"
    policy.remove("v1")
    policy.prune()
    assert "v1" in policy.installed()
    while decoding.size:
        decoding.step()
    assert policy.in_use("v1") == 0
    # A request waiting to join under a version keeps it too (the model process's inbox).
    policy.prune(waiting={"v1"})
    assert "v1" in policy.installed()
    policy.prune()
    assert policy.installed() == {"v2"}


def test_an_installed_adapter_waits_for_its_route(
    loaded: Policy, adapters: list[PreparedAdapter], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Requests may complete between a hot swap's install and its route: nothing removed after
    them may take the adapter about to go live, and installing one being removed keeps it."""
    routing = Routing()
    for adapter in adapters:
        loaded.install(adapter)
        routing.add(adapter.version)
    routing.route("v1", None, 0.0)
    loaded.install(prepare_adapter("v3", make_adapter(tiny_model_dir, tmp_path / "v3", 3, 0.3)))
    routing.add("v3")
    version = routing.take("someone")
    decode_all(loaded, engine_requests([Request(PREFIXES[1], "", 4, "someone")], version))
    routing.give_back(version)
    assert routing.unused() == ["v2"]
    routing.route("v3", None, 0.0)
    assert routing.unused() == ["v1", "v2"]
    for version in routing.unused():
        routing.removed(version)
        loaded.remove(version)
    loaded.prune()
    assert loaded.installed() == {"v3"}
    # Installed again before its removal lands (a route back to it comes next): it stays.
    loaded.install(adapters[0])
    loaded.remove("v1")
    assert loaded.keep("v1")
    loaded.prune()
    assert loaded.installed() == {"v1", "v3"}


def test_a_versions_learned_cut_ends_rows_before_an_unlikely_token(
    tiny_model_dir: Path, tmp_path: Path, adapters: list[PreparedAdapter]
) -> None:
    from core.wire import CHECKPOINT_METADATA, CheckpointMetadata

    path = make_adapter(tiny_model_dir, tmp_path / "v3", seed=3, scale=0.3)
    metadata = CheckpointMetadata(base_model=str(tiny_model_dir), parent_version="base", stop_logprob=-1.5)
    (path / CHECKPOINT_METADATA).write_text(metadata.model_dump_json())
    cut = version_rules(path)
    assert cut.stop_logprob == -1.5 and version_rules(tmp_path / "nothing") == Cut()

    policy = Policy(str(tiny_model_dir), temperature=1.0, max_new_tokens=12, device="cpu")
    policy.install(prepare_adapter("v3", path))
    routing = Routing()
    routing.add("v3")
    torch.manual_seed(0)
    requests = [Request(prefix, "", None, "u") for prefix in PREFIXES * 6]
    uncut = serve_all(policy, routing, requests, {"v3": cut})
    routing.route("v3", None, 0.0)
    samples = serve_all(policy, routing, requests, {"v3": cut})

    assert all(s.model_version == "v3" for s in samples)
    assert all(lp >= -1.5 for s in samples for lp in s.token_logprobs)
    assert all(len(s.token_logprobs) == len(s.completion_ids) for s in samples)
    # The uncut base model samples tokens below the threshold; the cut version ends before them,
    # some before their first token, which shows nothing.
    assert any(lp < -1.5 for s in uncut for lp in s.token_logprobs)
    assert any(s.completion_ids == [] and s.text == "" for s in samples)
    # What a cut row recorded is the model's own log-probs of the tokens it kept.
    for sample, request in zip(samples, requests, strict=True):
        if sample.completion_ids and request.prefix.endswith((".", "(")):
            recorded = teacher_forced(policy, "v3", sample.prompt_ids, sample.completion_ids)
            assert sample.token_logprobs == pytest.approx(recorded, abs=1e-4)


def test_a_versions_confidence_floor_withholds_its_unsure_completions(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from core.wire import CHECKPOINT_METADATA, CheckpointMetadata

    requests = [Request(prefix, "", None, "u") for prefix in PREFIXES * 8]
    policy = Policy(str(tiny_model_dir), temperature=1.0, max_new_tokens=12, device="cpu")
    routing = Routing()
    cuts: dict[str, Cut] = {}

    def serve(version: str, floors: dict[str, float]) -> list[Sample]:
        # The same weights under each name; only the floor in the metadata differs.
        path = make_adapter(tiny_model_dir, tmp_path / version, seed=4, scale=0.3)
        metadata = CheckpointMetadata(
            base_model=str(tiny_model_dir), parent_version="base", min_confidence=floors
        )
        (path / CHECKPOINT_METADATA).write_text(metadata.model_dump_json())
        cuts[version] = version_rules(path)
        assert cuts[version].min_confidence == floors and cuts[version].stop_logprob is None
        policy.install(prepare_adapter(version, path))
        routing.add(version)
        routing.route(version, None, 0.0)
        # Each request on its own, seeded by its index: a withheld row ends early, and in a
        # shared batch the rows after it would draw other numbers.
        samples = []
        for i, request in enumerate(requests):
            torch.manual_seed(i)
            samples += serve_all(policy, routing, [request], cuts)
        return samples

    unfloored = serve("v4", {})
    floor = sorted(confidence(s.token_logprobs) for s in unfloored)[len(unfloored) // 2]
    # The same floor wherever the cursor stands (one per place; the fit sets each on its own).
    floored = serve("v5", dict.fromkeys(PLACES, floor))

    # The same draws: each completion at least as sure as the floor is shown as it was, each less
    # sure one is an abstention with no tokens.
    withheld = 0
    for before, after in zip(unfloored, floored, strict=True):
        if confidence(before.token_logprobs) >= floor:
            assert (after.text, after.completion_ids) == (before.text, before.completion_ids)
        else:
            withheld += 1
            assert (after.text, after.completion_ids, after.token_logprobs) == ("", [], [])
        assert after.model_version == "v5"
    assert 0 < withheld < len(requests)

    # A withheld row leaves the batch once its first tokens have decided it, not at its end.
    def forward_passes(request_index: int) -> int:
        torch.manual_seed(request_index)
        decoding = Decoding(policy)
        decoding.join([(0, plan(requests[request_index], "v5", cuts["v5"]))])
        passes = 1
        while decoding.size:
            decoding.step()
            passes += 1
        return passes

    long_and_withheld = [
        i
        for i, before in enumerate(unfloored)
        if len(before.completion_ids) > LEADING_TOKENS and confidence(before.token_logprobs) < floor
    ]
    assert long_and_withheld
    assert all(forward_passes(i) == LEADING_TOKENS for i in long_and_withheld)

    # A floor applies where the cursor stands only: after "return" (in a word) nothing is shown,
    # elsewhere what was.
    in_words = serve("v6", {IN_WORD: 0.0})
    for request, before, after in zip(requests, unfloored, in_words, strict=True):
        if cursor_place(request.prefix) == IN_WORD:
            assert after.completion_ids == []
        else:
            assert (after.text, after.completion_ids) == (before.text, before.completion_ids)
    assert any(cursor_place(r.prefix) == IN_WORD for r in requests)


def test_a_request_at_the_start_of_an_empty_file_is_served_beside_others(
    policy: Policy, routing: Routing
) -> None:
    routing.route("v1", None, 0.0)
    torch.manual_seed(0)
    requests = [Request("", "", None, "u"), *(Request(p, "", None, "u") for p in PREFIXES)]
    samples = serve_all(policy, routing, requests)
    assert samples[0].prompt_ids == [policy.eos_token_id]
    assert all(len(s.token_logprobs) == len(s.completion_ids) for s in samples)


def test_sampling_draws_each_token_with_its_probability_and_never_a_masked_one() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25]])
    logprobs = probs.log()
    logprobs[1, 0] = float("-inf")  # masked: the rest of the row is renormalized
    draws = 50_000
    chosen = sample_rows(logprobs.repeat(draws, 1)).view(draws, 2)
    share = torch.stack([torch.bincount(chosen[:, row], minlength=4) for row in range(2)]) / draws
    expected = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 1 / 3, 1 / 3, 1 / 3]])
    # Five standard errors of a share of 50,000 draws at most.
    assert (share - expected).abs().max() < 5 * (0.25 / draws) ** 0.5
    assert share[0, 1] == 0 and share[1, 0] == 0


def test_the_in_process_engine_has_every_method_of_the_engine_interface() -> None:
    import inspect

    from backend.batching import InProcessEngine
    from backend.engine import Engine

    wanted = {name: member for name, member in vars(Engine).items() if not name.startswith("_")}
    assert {"start", "close", "install", "remove", "complete", "failure"} <= set(wanted)
    for name, member in wanted.items():
        mine = getattr(InProcessEngine, name)
        if isinstance(member, property):
            assert isinstance(mine, property), name
            continue
        assert inspect.iscoroutinefunction(mine) == inspect.iscoroutinefunction(member), name
        assert list(inspect.signature(mine).parameters) == list(inspect.signature(member).parameters), name
