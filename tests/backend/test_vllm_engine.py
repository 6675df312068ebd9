"""The vLLM engine against real vLLM servers on this machine's CPU, and the rules both engines share.

Parity: the same assertions on the in-process engine and on vLLM (FIM prompt ids, healing held,
stops, the confidence floor, the learned cut, abstention, and recorded log-probs recomputed with
transformers + peft from the stored tokens). vLLM alone: versions installed and removed, a server
that restarts (versions back before traffic, 503 while down), hot swaps under load, and exactness
on a Qwen2-architecture model (which vLLM builds without Llama's logit scale).

One server per model for the module: the tiny Llama's is the session's (`vllm_server`), connected to
as a server run elsewhere (`serving.vllm_urls`); the Qwen2 one the engine starts and owns.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_adapter
from vllm_support import TEMPERATURE, LoopThread, needs_vllm, serving

from backend import stops
from backend.batching import InProcessEngine
from backend.completions import Completions, Cut, Request, finish, plan
from backend.engine import EngineRequest, EngineUnavailable, Generation
from backend.model_process import LoopConfig
from backend.vllm_engine import VllmEngine
from core.confidence import IN_WORD, LEADING_TOKENS, LINE_START
from core.config import ModelConfig
from core.healing import TokenTexts, healed_text
from core.processes import free_port
from core.prompts import build_prompt_ids, detect_fim_format
from core.show_policy import Logistic, ShowPolicy
from core.wire import BASE_VERSION

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: sized for a test box, not a server

CAP = 16
TOLERANCE = 1e-4  # float32, both sides
MODEL = ModelConfig(temperature=TEMPERATURE, max_new_tokens=CAP, device="cpu", threads=1)
# Mid-line, at a line start, in a word with a suffix after the cursor (a FIM prompt), after a symbol.
PREFIXES = [
    "import os\n\ndef main():\n    path = os.pa",
    "def add(a, b):\n    ",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        sel",
    "for i in range(",
]
SUFFIX = "\n    return path\n"


def ask(prefix: str, version: str = BASE_VERSION, suffix: str = "", cut: Cut | None = None) -> EngineRequest:
    """What Completions asks an engine for `prefix` under `version` (backend/completions.plan)."""
    return plan(Request(prefix, suffix, None, "someone"), version, cut or Cut())


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def texts(tiny_model_dir: Path) -> TokenTexts:
    """Each token's text inside a sequence, as both engines read it (core/healing.py)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return TokenTexts(tokenizer, tokenizer.eos_token_id)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("v1"), seed=1, scale=0.3)


@pytest.fixture(scope="module", params=["inprocess", pytest.param("vllm", marks=needs_vllm)])
def engine(
    request: pytest.FixtureRequest, loop: LoopThread, tiny_model_dir: Path, adapter: Path
) -> Iterator[Any]:
    """Each engine serving the tiny Llama, with version v1 installed."""
    if request.param == "vllm":
        made: Any = vllm_engine_for(request.getfixturevalue("vllm_server"), tiny_model_dir)
    else:
        made = InProcessEngine(LoopConfig(str(tiny_model_dir), MODEL, max_batch=8))
    loop.run(made.start())
    loop.run(made.install("v1", adapter))
    yield made
    loop.run(made.close())


def complete_all(loop: LoopThread, engine: Any, requests: list[EngineRequest]) -> list[Generation]:
    async def together() -> list[Generation]:
        return list(await asyncio.gather(*(engine.complete(r) for r in requests)))

    return loop.run(together())


class Reference:
    """Log-probs recomputed with transformers + peft from the stored tokens: log_softmax(logits / T)
    of the unrestricted model, at each recorded token."""

    def __init__(self, model_dir: Path, adapters: dict[str, Path]) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        self.torch = torch
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.models: dict[str, Any] = {BASE_VERSION: base}
        for version, path in adapters.items():
            fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            self.models[version] = PeftModel.from_pretrained(fresh, str(path)).eval()

    def logprobs(self, generation: Generation) -> list[float]:
        torch = self.torch
        ids = torch.tensor([generation.prompt_ids + generation.completion_ids])
        with torch.no_grad():
            logits = self.models[generation.version](ids).logits[0].float()
        tempered = torch.log_softmax(logits / TEMPERATURE, dim=-1)
        start = len(generation.prompt_ids) - 1
        return [tempered[start + i, token].item() for i, token in enumerate(generation.completion_ids)]

    def worst(self, generations: list[Generation]) -> float:
        """The largest |recorded - recomputed| over every token of `generations`."""
        return max(
            abs(recorded - again)
            for g in generations
            for recorded, again in zip(g.token_logprobs, self.logprobs(g), strict=True)
        )


# Parity: both engines.


def test_fim_prompt_ids_are_built_alike(engine: Any, loop: LoopThread, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fim = detect_fim_format(tokenizer)
    requests = [ask(prefix, suffix=SUFFIX) for prefix in PREFIXES]
    for request, generation in zip(requests, complete_all(loop, engine, requests), strict=True):
        prefix = request.prefix[: len(request.prefix) - len(generation.healed)]
        assert generation.healed == request.healed
        expected = build_prompt_ids(tokenizer, fim, prefix, SUFFIX, MODEL.context_tokens)
        assert generation.prompt_ids == expected
        assert expected[0] == tokenizer.convert_tokens_to_ids(fim.prefix)  # a FIM prompt
        # For /metrics: the time to the first token, queueing included.
        assert generation.first_token_s is not None and 0 < generation.first_token_s < 60


def test_the_first_tokens_spell_the_healed_text(engine: Any, loop: LoopThread, texts: TokenTexts) -> None:
    """The prompt stops before the text being typed; the first tokens write it again (or end at
    once: an abstention), under the base model and an adapter."""
    healed = [(prefix, healed_text(prefix)) for prefix in PREFIXES]
    assert all(text for _, text in healed[:3])
    requests = [ask(prefix, version) for prefix, _ in healed for version in (BASE_VERSION, "v1")] * 3
    generations = complete_all(loop, engine, requests)
    written = 0
    for request, generation in zip(requests, generations, strict=True):
        assert generation.healed == request.healed
        assert not request.prefix.endswith(request.healed) or generation.prompt_ids  # prompt left it out
        if generation.healed:
            ended_at_once = generation.completion_ids[:1] == [texts.eos_token_id]
            assert generation.text.startswith(generation.healed) or ended_at_once, (
                generation.healed,
                generation.text,
            )
            written += not ended_at_once
    assert written >= len(requests) // 4  # not every healed row ended at once: healing was exercised


def test_rows_end_at_their_line_or_block(engine: Any, loop: LoopThread, texts: TokenTexts) -> None:
    """Mid-line: the row ends with the first token holding a newline. At a line start: with the token
    that completes the block (stops.stop_index), never later; or at EOS or the cap."""
    requests = [ask(PREFIXES[0]), ask(PREFIXES[3]), ask(PREFIXES[1]), ask("x = 1\n")] * 4
    for request, generation in zip(requests, complete_all(loop, engine, requests), strict=True):
        ids = generation.completion_ids
        pieces = [texts.text(token) for token in ids]
        text = "".join(pieces)
        line = request.stop.line_prefix(generation.healed)
        ended = (
            len(ids) == CAP
            or ids[-1] == texts.eos_token_id
            or stops.stop_index(text, request.stop.mid_line, line) is not None
        )
        assert ended, (request.prefix, text)
        before = "".join(pieces[:-1])
        assert stops.stop_index(before, request.stop.mid_line, line) is None, (request.prefix, text)
        if request.stop.mid_line:
            assert "\n" not in before


def test_a_confidence_floor_withholds_a_row_once_its_first_tokens_decide_it(
    engine: Any, loop: LoopThread
) -> None:
    """A floor no completion reaches: every row stops after LEADING_TOKENS tokens (unless it ended
    sooner) and is an abstention; a floor every completion clears changes nothing."""
    never = Cut(min_confidence={LINE_START: 0.0, IN_WORD: 0.0})
    always = Cut(min_confidence={LINE_START: -1e9, IN_WORD: -1e9})
    prefixes = [PREFIXES[1], PREFIXES[0]] * 3
    withheld = complete_all(loop, engine, [ask(p, cut=never) for p in prefixes])
    for prefix, generation in zip(prefixes, withheld, strict=True):
        assert len(generation.completion_ids) <= LEADING_TOKENS
        sample = finish(ask(prefix, cut=never), generation)
        assert sample.text == "" and sample.completion_ids == [] and sample.token_logprobs == []
    shown = complete_all(loop, engine, [ask(p, cut=always) for p in prefixes])
    assert max(len(g.completion_ids) for g in shown) > LEADING_TOKENS


def test_the_learned_filter_withholds_a_row_once_its_first_tokens_decide_it(
    engine: Any, loop: LoopThread
) -> None:
    """A learned filter that shows nothing but what exploration shows (half): each row's one draw,
    taken in `plan`, decides both where the engine ends it and what `finish` shows. A withheld row
    stops after LEADING_TOKENS tokens and is an abstention with its features kept; a shown one is
    decoded on, with propensity 0.5."""
    import random

    explore = ShowPolicy(filter=Logistic(bias=-20.0, weights={}), threshold=0.5, explore=0.5)
    random.seed(3)  # the draws: which rows exploration shows
    requests = [ask(p, cut=Cut(show_policy=explore)) for p in [PREFIXES[1], PREFIXES[0]] * 6]
    generations = complete_all(loop, engine, requests)
    shown = []
    for request, generation in zip(requests, generations, strict=True):
        assert request.showing is not None and request.showing.policy is explore
        sample = finish(request, generation)
        assert sample.decision is not None and sample.decision.rule == "learned"
        assert "confidence" in sample.decision.features
        if request.showing.draw < 0.5:
            shown.append(generation)
            assert sample.decision.propensity == 0.5
            assert sample.decision.shown == bool(sample.text)
        else:
            assert len(generation.completion_ids) <= LEADING_TOKENS
            assert (sample.text, sample.completion_ids, sample.decision.shown) == ("", [], False)
    assert 0 < len(shown) < len(requests)
    assert max(len(g.completion_ids) for g in shown) > LEADING_TOKENS


@needs_vllm
def test_a_row_ended_early_is_no_longer_decoded_by_vllm(
    vllm_server: Any, loop: LoopThread, tiny_model_dir: Path
) -> None:
    """Closing a row's stream (here: withheld by its floor after LEADING_TOKENS tokens, with room
    for 512 and no stop vLLM knows of) makes vLLM abort it: on a quiet machine 8 rows cost it
    24-60 tokens, against about 1,600-3,100 read to the end.

    The close can only follow the first tokens, and on a 2-core box vLLM's frontend now and then
    delivers them 0.7-1.6 s late while its engine core, pinned to the other core, decodes on (2
    tries in 10 with a simulation beside; every try of three under two): rows then end before
    their close arrives, or are aborted halfway. So what is judged is vLLM's own log: rows it
    aborted (a row read to the end is never aborted) over three tries, six while none was, and the
    token count on the best try only where the machine was quiet enough to tell."""
    engine = vllm_engine_for(vllm_server, tiny_model_dir)
    loop.run(engine.start())
    never = Cut(min_confidence={LINE_START: 0.0})
    requests = [plan(Request("import os\nimport sys\n", "", 512, "someone"), BASE_VERSION, never)] * 8
    costs: list[float] = []
    aborted = 0
    try:
        # Three tries, and up to six while none was aborted (a busy spell can outlast three).
        while len(costs) < (3 if aborted else 6) and (not costs or min(costs) >= 100 * len(requests)):
            before, logged = settled_generated_tokens(vllm_server), aborts_logged(vllm_server)
            generations = complete_all(loop, engine, requests)
            costs.append(settled_generated_tokens(vllm_server) - before)
            aborted += aborts_logged(vllm_server) - logged
            assert all(len(g.completion_ids) <= LEADING_TOKENS for g in generations)
    finally:
        loop.run(engine.close())
    assert aborted > 0, costs
    if min(costs) < 100 * len(requests):
        assert aborted >= len(requests) // 2, (aborted, costs)


def aborts_logged(server: Any) -> int:
    """The requests vLLM's log says it aborted (its --enable-log-requests)."""
    return len(re.findall(r"Request \S+ aborted\.", server.log_path.read_text(errors="replace")))


def vllm_metrics(server: Any) -> str:
    return httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {server.api_key}"}).text


def generated_tokens(server: Any) -> float:
    """vLLM's count of the tokens it has decoded (its Prometheus /metrics)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in vllm_metrics(server).splitlines()
        if line.startswith("vllm:generation_tokens_total")
    )


def settled_generated_tokens(server: Any, quiet_s: float = 0.5, limit_s: float = 30.0) -> float:
    """generated_tokens once vLLM has stopped decoding for `quiet_s` (or after `limit_s`): an
    earlier test's rows, and aborted ones, finish their last steps after their streams close."""
    deadline = time.monotonic() + limit_s
    tokens = generated_tokens(server)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = generated_tokens(server)
        if now == tokens:
            break
        tokens = now
    return tokens


def vllm_engine_for(server: Any, model_dir: Path) -> VllmEngine:
    """An engine in front of the session's server, as in front of a server run elsewhere."""
    return VllmEngine(str(model_dir), MODEL, serving(vllm_urls=[server.url], vllm_api_key=server.api_key))


def test_a_learned_cut_ends_rows_before_their_first_unlikely_token(engine: Any, loop: LoopThread) -> None:
    cut = -2.0
    requests = [ask(prefix, cut=Cut(stop_logprob=cut)) for prefix in PREFIXES[1:] * 3]
    generations = complete_all(loop, engine, requests)
    assert all(lp >= cut for g in generations for lp in g.token_logprobs)
    assert any(len(g.completion_ids) < CAP for g in generations)
    # A cut above every log-prob: nothing is taken, nothing is shown.
    nothing = complete_all(loop, engine, [ask(PREFIXES[1], cut=Cut(stop_logprob=0.0))])[0]
    assert nothing.completion_ids == [] and finish(ask(PREFIXES[1]), nothing).text == ""


def test_recorded_logprobs_are_the_models_own(
    engine: Any, loop: LoopThread, tiny_model_dir: Path, adapter: Path, exactness: dict[str, float]
) -> None:
    """Recomputed with transformers + peft from the stored tokens: base and adapter, healed rows
    (whose first tokens were held) and rows without healing."""
    requests = [ask(p, v) for p in [*PREFIXES, "x = 1\n"] for v in (BASE_VERSION, "v1")]
    generations = complete_all(loop, engine, requests)
    assert any(g.healed and g.completion_ids for g in generations)
    assert any(not g.healed and g.completion_ids for g in generations)
    worst = Reference(tiny_model_dir, {"v1": adapter}).worst(generations)
    exactness[f"tiny llama, {type(engine).__name__}"] = worst
    assert worst < TOLERANCE


@pytest.fixture(scope="module")
def exactness() -> Iterator[dict[str, float]]:
    """Max |recorded - recomputed| per model and engine, printed at the end (pytest -s)."""
    figures: dict[str, float] = {}
    yield figures
    for name, worst in figures.items():
        print(f"exactness: {name}: max |diff| {worst:.2e}")


# vLLM alone.


@needs_vllm
def test_versions_are_loaded_and_unloaded_by_name(
    vllm_server: Any, loop: LoopThread, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Installed on the server by name (twice: a no-op), served, lost and loaded again on demand,
    unloaded (twice: a no-op); an adapter that cannot be loaded is refused."""
    engine = vllm_engine_for(vllm_server, tiny_model_dir)
    loop.run(engine.start())
    try:
        adapter = make_adapter(tiny_model_dir, tmp_path / "v9", seed=9, scale=0.3)

        def listed() -> set[str]:
            response = httpx.get(
                f"{vllm_server.url}/v1/models", headers={"authorization": f"Bearer {vllm_server.api_key}"}
            )
            return {entry["id"] for entry in response.json()["data"]}

        loop.run(engine.install("v9", adapter))
        loop.run(engine.install("v9", adapter))  # installed already: a no-op
        assert "v9" in listed()
        served = loop.run(engine.complete(ask(PREFIXES[0], "v9")))
        assert served.version == "v9" and served.completion_ids
        # The server loses it behind the engine's back (as a restart between two health checks
        # would): the request that finds it missing loads it again and is served.
        headers = {"authorization": f"Bearer {vllm_server.api_key}"}
        lost = httpx.post(
            f"{vllm_server.url}/v1/unload_lora_adapter", json={"lora_name": "v9"}, headers=headers
        )
        assert lost.status_code == 200 and "v9" not in listed()
        served = loop.run(engine.complete(ask(PREFIXES[0], "v9")))
        assert served.version == "v9" and served.completion_ids and "v9" in listed()
        loop.run(engine.remove("v9"))
        assert "v9" not in listed()
        loop.run(engine.remove("v9"))  # gone already
        with pytest.raises(ValueError):
            loop.run(engine.install("broken", tmp_path / "no-such-adapter"))
        # Without a key the server answers nobody: its adapter loading takes any path.
        assert httpx.get(f"{vllm_server.url}/v1/models").status_code == 401
    finally:
        loop.run(engine.close())


@needs_vllm
def test_requests_spread_over_the_servers_that_are_up(
    vllm_server: Any, loop: LoopThread, tiny_model_dir: Path, adapter: Path
) -> None:
    """Three URLs: two names of the session's server (two servers, as far as the engine knows) and
    one where nothing listens. The engine starts on those up, sends requests to both, and counts
    the third out until it answers."""
    port = vllm_server.port
    urls = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://127.0.0.1:{free_port()}"]
    settings = serving(vllm_urls=urls, vllm_api_key=vllm_server.api_key, vllm_start_timeout_s=60)
    engine = VllmEngine(str(tiny_model_dir), MODEL, settings)
    loop.run(engine.start())
    try:
        loop.run(engine.install("v1", adapter))
        assert engine.failure is None
        first, second, dead = engine.servers
        deadline = time.monotonic() + 30
        while not (first.routable and second.routable):  # the slower one joins through the watchdog
            assert time.monotonic() < deadline, engine.servers
            time.sleep(0.1)
        assert not dead.routable and {"v1"} == first.installed == second.installed
        generations = complete_all(
            loop, engine, [ask(p, v) for p in PREFIXES for v in ("v1", BASE_VERSION)] * 2
        )
        assert all(g.completion_ids for g in generations)
        assert first.sent and second.sent and not dead.sent
    finally:
        loop.run(engine.close())


@needs_vllm
def test_a_server_tempering_at_another_temperature_is_refused(
    vllm_server: Any, loop: LoopThread, tiny_model_dir: Path
) -> None:
    """The session's server divides logits by 0.7; a backend sampling at 1.0 would record other
    log-probs than the trainer computes, so its engine does not start, and says why."""
    settings = serving(vllm_urls=[vllm_server.url], vllm_api_key=vllm_server.api_key)
    engine = VllmEngine(str(tiny_model_dir), ModelConfig(temperature=1.0), settings)
    with pytest.raises(EngineUnavailable, match=r"tempers its logits at 0\.7"):
        loop.run(engine.start())


@needs_vllm
def test_hot_swaps_under_load_fail_no_request(
    vllm_server: Any, loop: LoopThread, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Completions (routing, installs, removal once unused) over vLLM: 12 clients ask without pause
    while the live version is swapped 4 times; every request is answered."""
    adapters = [make_adapter(tiny_model_dir, tmp_path / f"s{i}", seed=20 + i, scale=0.3) for i in range(4)]
    engine = vllm_engine_for(vllm_server, tiny_model_dir)
    completions = Completions(engine)

    async def scenario() -> tuple[int, list[BaseException], set[str]]:
        await completions.start()
        served: list[str] = []
        failures: list[BaseException] = []
        swapping = True

        async def client(n: int) -> None:
            while swapping:
                try:
                    sample = await completions.complete(Request(PREFIXES[n % 4], "", 8, f"user{n}"))
                    served.append(sample.model_version)
                except Exception as error:
                    failures.append(error)

        clients = [asyncio.create_task(client(n)) for n in range(12)]
        for i, path in enumerate(adapters):
            await asyncio.sleep(0.5)
            await completions.install(f"s{i}", path)
            await completions.route(f"s{i}", None, 0.0)
        await asyncio.sleep(0.5)
        swapping = False
        await asyncio.gather(*clients)
        await completions.close()
        return len(served), failures, set(served)

    count, failures, versions = loop.run(scenario())
    assert failures == []
    assert count > 24 and len(versions) >= 3, (count, versions)


# A Qwen2-architecture model (Qwen2.5-Coder's): vLLM's Qwen2 has no logit scale to temper with.


@pytest.fixture(scope="module")
def tiny_qwen(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised Qwen2 model with the tiny tokenizer plus Qwen's FIM tokens."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    output = tmp_path_factory.mktemp("qwen")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]}
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.2,  # peaked distributions, not near-uniform ones
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


@pytest.fixture(scope="module")
def qwen_engine(
    tiny_qwen: Path, loop: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmEngine]:
    """The engine with a server of its own (no vllm_urls), serving the Qwen2 model."""
    engine = VllmEngine(
        str(tiny_qwen),
        MODEL,
        serving(),
        trainer_rank=4,
        log_path=tmp_path_factory.mktemp("qwen-log") / "vllm.log",
    )
    loop.run(engine.start(), timeout=600)
    yield engine
    loop.run(engine.close())
    assert engine.owned is not None and engine.owned.exited


@needs_vllm
def test_logprobs_are_exact_on_a_qwen2_model(
    qwen_engine: VllmEngine, loop: LoopThread, tiny_qwen: Path, tmp_path: Path, exactness: dict[str, float]
) -> None:
    assert qwen_engine.info.fim == "qwen"
    adapter = make_adapter(tiny_qwen, tmp_path / "q1", seed=3, scale=0.3)
    loop.run(qwen_engine.install("q1", adapter))
    requests = [ask(p, v, suffix=s) for p in PREFIXES for v in (BASE_VERSION, "q1") for s in ("", SUFFIX)]
    generations = complete_all(loop, qwen_engine, requests)
    for generation in generations:
        if generation.healed and generation.completion_ids[:1] != [qwen_engine.eos_token_id]:
            assert generation.text.startswith(generation.healed)
    worst = Reference(tiny_qwen, {"q1": adapter}).worst(generations)
    exactness["tiny qwen2, VllmEngine"] = worst
    assert worst < TOLERANCE


@needs_vllm
def test_a_restarted_server_gets_its_versions_back_before_traffic(
    qwen_engine: VllmEngine, loop: LoopThread
) -> None:
    """Its server killed, requests fail with EngineUnavailable (the route's 503); the engine starts
    it again, loads the versions in service, and only then routes to it."""
    assert "q1" in qwen_engine.servers[0].installed
    owned = qwen_engine.owned
    assert owned is not None and owned.process is not None
    os.killpg(owned.process.pid, signal.SIGKILL)
    owned.process.wait()
    with pytest.raises(EngineUnavailable):
        loop.run(qwen_engine.complete(ask(PREFIXES[0], "q1")))
    deadline = time.monotonic() + 400
    while qwen_engine.failure is not None or not qwen_engine.servers[0].routable:
        assert time.monotonic() < deadline, qwen_engine.failure
        time.sleep(0.1)
    # Routable again: the version was loaded before (no request had to find it missing).
    response = httpx.get(f"{owned.url}/v1/models", headers={"authorization": f"Bearer {owned.api_key}"})
    assert "q1" in {entry["id"] for entry in response.json()["data"]}
    generation = loop.run(qwen_engine.complete(ask(PREFIXES[0], "q1")))
    assert generation.version == "q1" and generation.completion_ids
