"""`flywheel bootstrap`: a real tiny model trained on a small corpus, saved, reloaded and evaluated."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.prompts import FIM_FORMATS, FLYWHEEL_SPECIAL_TOKENS, build_prompt_ids, detect_fim_format
from trainer.bootstrap import REPORT_FILE, build_base_model, main
from trainer.bootstrap.evaluate import evaluate
from trainer.bootstrap.model import make_model
from trainer.bootstrap.presets import PRESETS
from trainer.bootstrap.samples import Samples
from trainer.bootstrap.tokenizer import train_tokenizer
from trainer.bootstrap.train import lr_at, schedule_progress, train
from trainer.corpus import is_held_out, load_corpus

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SOURCES = [
    "textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py", "abc.py", "colorsys.py",
    "string.py", "copy.py", "genericpath.py", "posixpath.py", "linecache.py", "reprlib.py", "operator.py",
    "contextlib.py", "json/decoder.py", "json/encoder.py", "json/__init__.py", "functools.py",
]  # fmt: skip
TRAIN_MARKER = "qzxjtrainmark"
HELD_MARKER = "qzxjheldmark"
BUDGET_S = 20.0


def _names(root: Path, held_out: bool, count: int) -> list[str]:
    """File names that the hash split puts on the wanted side, whatever the tmp dir is called."""
    names = (f"mod_{i}.py" for i in range(100_000))
    return [n for n in names if is_held_out(f"{root.name}/{n}") == held_out][:count]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    train_names = _names(root, held_out=False, count=len(SOURCES) - 2)
    held_names = _names(root, held_out=True, count=2)
    for name, source in zip(train_names + held_names, SOURCES, strict=True):
        shutil.copy(STDLIB / source, root / name)
    # Identifiers repeated often enough that BPE merges them whole if it ever reads them.
    (root / train_names[0]).open("a").write(f"\n{TRAIN_MARKER} = 1\n" * 300)
    (root / held_names[0]).open("a").write(f"\n{HELD_MARKER} = 1\n" * 300)
    return root


@pytest.fixture(scope="module")
def built(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("models") / "base"
    report = build_base_model(out, [corpus_dir], BUDGET_S, size="tiny", include_stdlib=False, progress=False)
    return out, report


@pytest.fixture(scope="module")
def loaded(built: tuple[Path, dict[str, Any]]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = built
    return AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)


def test_split_is_by_path_hash_and_held_out_text_is_never_trained_on(corpus_dir: Path) -> None:
    data = load_corpus([corpus_dir], include_stdlib=False)
    assert len(data.held_out) == 2 and len(data.train) == len(SOURCES) - 2
    assert all(is_held_out(key) for key in data.held_out)
    assert not any(is_held_out(key) for key in data.train)
    assert not any(HELD_MARKER in text for text in data.train.values())
    assert any(HELD_MARKER in text for text in data.held_out.values())


def test_stdlib_corpus_skips_tests_and_installed_packages() -> None:
    data = load_corpus([], include_stdlib=True)
    keys = [*data.train, *data.held_out]
    assert len(keys) > 300
    assert not any("/site-packages/" in k or "/test/" in k or "/tests/" in k for k in keys)
    # Generated tables (codec maps) are left out; hand-written codecs stay.
    assert "stdlib/encodings/cp1252.py" not in keys
    assert "stdlib/encodings/utf_8.py" in keys


def test_saved_model_loads_offline_with_flywheel_fim_tokens(
    built: tuple[Path, dict[str, Any]], loaded: tuple[Any, Any]
) -> None:
    out, report = built
    model, tokenizer = loaded
    assert (out / "model.safetensors").is_file() and (out / REPORT_FILE).is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging dirs left behind"
    for index, token in enumerate(FLYWHEEL_SPECIAL_TOKENS):
        assert tokenizer.encode(token, add_special_tokens=False) == [index]
    assert tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 4 and tokenizer.bos_token_id is None
    assert detect_fim_format(tokenizer).name == "flywheel"
    assert model.generation_config.eos_token_id == 0 and model.generation_config.pad_token_id == 4
    assert model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == report["parameters"]


def test_tokenizer_learned_only_from_training_files(loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    vocab = tokenizer.get_vocab()
    assert TRAIN_MARKER in vocab
    assert HELD_MARKER not in vocab


def test_training_lowered_the_loss(built: tuple[Path, dict[str, Any]]) -> None:
    _, report = built
    assert report["steps"] > 10 and report["tokens_trained"] > 10_000
    assert report["loss_end"] < report["loss_start"] - 1.0
    # Far below a uniform guess over the vocabulary, on files it never saw.
    assert report["eval"]["token_loss"] < math.log(report["vocab_size"]) - 1.0
    # It trained until the budget (what preparing the corpus left of it) was spent, and at least the
    # preset's minimum steps; when it stops is test_training_stops_at_the_budget_or_its_step_count's.
    assert report["train_s"] >= max(BUDGET_S - report["prep_s"], 1.0)
    assert report["steps"] >= report["preset"]["min_steps"]


def test_training_stops_at_the_budget_or_its_step_count() -> None:
    timed = dataclasses.replace(PRESETS["tiny"], min_steps=300, steps=0)
    assert schedule_progress(0, 0.0, timed, 20.0) == 0.0
    assert schedule_progress(400, 10.0, timed, 20.0) == 0.5
    assert schedule_progress(400, 20.0, timed, 20.0) is None  # the budget is spent: stop
    # A busy machine, short of the minimum steps at the budget: on, at the schedule's floor.
    assert schedule_progress(299, 25.0, timed, 20.0) == 1.0
    assert schedule_progress(300, 25.0, timed, 20.0) is None
    # One step at least, whatever the clock says.
    assert schedule_progress(0, 25.0, dataclasses.replace(timed, min_steps=0), 20.0) == 1.0
    counted = dataclasses.replace(timed, steps=100)
    assert schedule_progress(50, 999.0, counted, 20.0) == 0.5  # the clock does not matter
    assert schedule_progress(100, 0.0, counted, 20.0) is None


def test_fim_middle_ends_with_eos_and_generation_terminates(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    fmt = FIM_FORMATS["flywheel"]
    eos = tokenizer.eos_token_id
    text = (STDLIB / "textwrap.py").read_text()
    line_starts = [i + 1 for i, c in enumerate(text) if c == "\n"]
    at_end, inside = [], []
    for start in line_starts[40:80]:
        end = text.index("\n", start)
        middle = tokenizer.encode(text[start:end], add_special_tokens=False)
        if len(middle) < 3:
            continue
        prompt = build_prompt_ids(tokenizer, fmt, text[:start], text[end:], 80)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + middle])).logits[0]
        p_eos = logits.softmax(-1)[:, eos]
        at_end.append(float(p_eos[-1]))  # after the whole line: time to stop
        inside.append(float(p_eos[len(prompt) : -1].mean()))  # mid-line: keep going
    assert len(at_end) > 10
    assert sum(at_end) / len(at_end) > 3 * sum(inside) / len(inside)

    out = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)
    assert len(prompt) < out.shape[1] <= len(prompt) + 40


def test_the_model_reads_python_as_python(tiny_model_dir: Path) -> None:
    # The session's tiny model, on code it never trained on: its loss is far lower on the real
    # token order than on the same tokens shuffled, so it has learned how Python goes on. (Greedy
    # text from a model trained for seconds swings between runs; this does not.)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer.encode((STDLIB / "colorsys.py").read_text()[:4000], add_special_tokens=False)[:512]
    shuffled = list(ids)
    random.Random(0).shuffle(shuffled)
    with torch.no_grad():
        real = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
        scrambled = model(input_ids=torch.tensor([shuffled]), labels=torch.tensor([shuffled])).loss.item()
    assert real < scrambled - 1.0, (real, scrambled)


def test_evaluation_figures_are_fractions(
    built: tuple[Path, dict[str, Any]], loaded: tuple[Any, Any]
) -> None:
    _, report = built
    model, tokenizer = loaded
    text = (STDLIB / "textwrap.py").read_text()
    figures = evaluate(model, tokenizer, [text], seq_len=128, n_lines=10, budget_tokens=80)
    for ev in (figures, report["eval"]):
        assert 0.0 <= ev["token_accuracy"] <= 1.0 and ev["tokens"] > 100
        assert 0.0 <= ev["next_line_exact"] <= 1.0 and 0.0 <= ev["next_line_similarity"] <= 1.0
    assert figures["next_line_samples"] == 10
    # Trained, it predicts held-out tokens far better than chance (1 in 512).
    assert report["eval"]["token_accuracy"] > 0.05


def test_existing_model_is_kept_without_force(
    built: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = built
    before = (out / "config.json").stat().st_mtime_ns
    assert main(output=out, corpus=[], budget_s=5, size="tiny", include_stdlib=False, force=False) == 0
    assert "already" in capsys.readouterr().out
    assert (out / "config.json").stat().st_mtime_ns == before


def test_fim_samples_follow_the_flywheel_order(corpus_dir: Path) -> None:
    data = load_corpus([corpus_dir], include_stdlib=False)
    texts = list(data.train.values())
    tokenizer = train_tokenizer(texts, 512)
    preset = PRESETS["tiny"]
    samples = Samples(tokenizer, texts, preset, seed=1)
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in FLYWHEEL_SPECIAL_TOKENS}
    line_like = 0
    for _ in range(40):
        ids, labels = samples.fim()
        ids, labels = ids.tolist(), labels.tolist()
        assert len(ids) == preset.seq_len and ids[0] == special["<fim_prefix>"]
        s, m = ids.index(special["<fim_suffix>"]), ids.index(special["<fim_middle>"])
        assert 0 < s < m
        middle = ids[m + 1 :]
        real = [t for t in middle if t != special["<pad>"]]
        # Padding is never a target; the middle's tokens are.
        assert all(lab == -100 for t, lab in zip(ids, labels, strict=True) if t == special["<pad>"])
        assert labels[m + 1 : m + 1 + len(real)] == real
        line_like += tokenizer.decode(real).count("\n") <= 3
    assert line_like >= 30


def test_lr_schedule_warms_up_and_decays() -> None:
    assert lr_at(0.0, 1.0) == 0.0
    assert lr_at(0.03, 1.0) == pytest.approx(1.0)
    assert lr_at(0.5, 1.0) < lr_at(0.1, 1.0)
    assert lr_at(1.0, 1.0) == pytest.approx(0.1)


def test_a_step_count_trains_exactly_that_many_steps_the_same_way_each_time(corpus_dir: Path) -> None:
    # The test suite's shared model is built this way, so its behaviour cannot depend on machine load.
    preset = dataclasses.replace(PRESETS["tiny"], steps=6, batch=2)
    texts = [p.read_text() for p in sorted(corpus_dir.glob("*.py"))[:4]]
    tokenizer = train_tokenizer(texts, preset.vocab_size)
    weights = []
    for _ in range(2):
        model = make_model(preset, len(tokenizer), seed=0)
        samples = Samples(tokenizer, texts, preset, seed=0)
        stats = train(model, samples, preset, 1e-6, torch.device("cpu"), progress=False)
        assert stats["steps"] == 6  # the tiny time budget neither stops it early nor keeps it going
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
