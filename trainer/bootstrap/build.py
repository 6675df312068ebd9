"""Builds the base model into a directory: corpus, tokenizer, model, training, held-out evaluation,
report; and `flywheel bootstrap`'s entry point."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_dir
from trainer.bootstrap.evaluate import evaluate
from trainer.bootstrap.model import make_model
from trainer.bootstrap.presets import PRESETS, Preset
from trainer.bootstrap.samples import Samples
from trainer.bootstrap.tokenizer import train_tokenizer
from trainer.bootstrap.train import train
from trainer.corpus import HELD_OUT_PERCENT, Corpus, load_corpus

REPORT_FILE = "flywheel_bootstrap.json"


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_base_model(
    output: Path,
    corpus: list[Path],
    budget_s: float,
    size: str = "small",
    include_stdlib: bool = True,
    progress: bool = True,
    seed: int = 0,
    device: str = "auto",
    held_out_percent: float = HELD_OUT_PERCENT,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a base model into `output` (replacing it atomically) and return the report.

    `budget_s` covers reading the corpus, the tokenizer and training; the held-out evaluation
    (about half a minute for the default size) comes on top. `overrides` replaces preset fields.
    """
    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(PRESETS)}")
    preset = replace(PRESETS[size], **(overrides or {}))
    started = time.monotonic()
    random.seed(seed)
    data = load_corpus(corpus, include_stdlib, held_out_percent)
    train_texts = list(data.train.values())
    tokenizer = train_tokenizer(train_texts, preset.vocab_size)
    samples = Samples(tokenizer, train_texts, preset, seed)
    model = make_model(preset, len(tokenizer), seed)
    prep_s = time.monotonic() - started
    stats = train(model, samples, preset, max(budget_s - prep_s, 1.0), _device(device), progress)
    eval_started = time.monotonic()
    figures = evaluate_held_out(model, tokenizer, list(data.held_out.values()), preset, seed)
    report = {
        "size": size,
        "preset": asdict(preset),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "corpus": corpus_summary(data, corpus, include_stdlib, held_out_percent, samples.tokens),
        **stats,
        "epochs": stats["tokens_trained"] / samples.tokens,
        "prep_s": prep_s,
        "eval_s": time.monotonic() - eval_started,
        "wall_s": time.monotonic() - started,
        "eval": figures,
        "seed": seed,
        "device": str(_device(device)),
        "torch_threads": torch.get_num_threads(),
    }
    with atomic_dir(Path(output), replace=True) as staging:
        model.to("cpu").save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def evaluate_held_out(
    model: Any, tokenizer: Any, held_out: list[str], preset: Preset, seed: int
) -> dict[str, float]:
    """The held-out figures (trainer/bootstrap/evaluate.py); none without held-out files."""
    if not held_out:
        return {}
    return evaluate(
        model,
        tokenizer,
        held_out,
        preset.seq_len,
        n_lines=preset.eval_lines,
        max_tokens=preset.eval_tokens,
        budget_tokens=min(384, preset.seq_len - 48),
        seed=seed,
        time_limit_s=preset.eval_lines_s,
    )


def corpus_summary(
    data: Corpus, dirs: list[Path], include_stdlib: bool, held_out_percent: float, train_tokens: int
) -> dict[str, Any]:
    return {
        "stdlib": include_stdlib,
        "dirs": [str(p) for p in dirs],
        "train_files": len(data.train),
        "train_chars": data.train_chars,
        "train_tokens": train_tokens,
        "held_out_percent": held_out_percent,
        "held_out_files": sorted(data.held_out),
    }


def summary_line(report: dict[str, Any], output: Path) -> str:
    ev = report["eval"]
    figures = (
        f"held-out next-token acc {ev['token_accuracy']:.1%} "
        f"(loss {ev['token_loss']:.2f}, {ev['tokens']} tokens), "
        f"next-line exact {ev['next_line_exact']:.1%} (similarity {ev['next_line_similarity']:.2f}, "
        f"n={ev['next_line_samples']})"
        if ev
        else "no held-out files to evaluate on"
    )
    return (
        f"bootstrap: {report['size']} model, {report['parameters'] / 1e6:.2f}M params, "
        f"{report['tokens_trained'] / 1e6:.2f}M tokens in {report['train_s']:.0f}s "
        f"({report['epochs']:.2f} epochs); {figures}; wall {report['wall_s']:.0f}s -> {output}"
    )


def main(
    output: Path,
    corpus: list[Path],
    budget_s: float,
    size: str = "small",
    include_stdlib: bool = True,
    force: bool = False,
    seed: int = 0,
) -> int:
    output = Path(output)
    if is_model_dir(output) and not force:
        print(f"bootstrap: a model is already at {output}; pass --force to rebuild it")
        return 0
    try:
        report = build_base_model(output, corpus, budget_s, size, include_stdlib, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bootstrap: {exc}")
        return 2
    print(summary_line(report, output))
    return 0
