"""The bootstrap's model and training sizes: `tiny` for the tests, `small` the default model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    seq_len: int  # ≥ the serving prompt budget (384) + a completion, so no position is unseen
    batch: int
    lr: float
    fim_rate: float = 0.5
    max_middle: int = 64  # tokens; longer middles are cut and then carry no end-of-text
    eval_lines: int = 300
    eval_tokens: int = 50_000
    eval_lines_s: float = 120.0  # a cap on the next-line test, which is slow on a busy CPU
    min_steps: int = 0  # trained past the budget until reached, so a busy machine still yields a model
    # Exactly this many steps, the schedule following steps instead of the clock (0: the time
    # budget rules): the same model however busy the machine, as the test suite needs.
    steps: int = 0


PRESETS = {
    # For tests: trains in seconds on one core and still writes Python-looking text.
    "tiny": Preset(
        vocab_size=512,
        hidden=64,
        layers=2,
        heads=2,
        ffn=192,
        seq_len=128,
        batch=8,
        lr=6e-3,
        max_middle=32,
        eval_lines=40,
        eval_tokens=4_000,
        eval_lines_s=15.0,
        min_steps=300,
    ),
    # The default, sized for ~10 minutes on a shared 2-core CPU, where optimizer steps are the scarce
    # thing: a 2.6M-parameter model (twice as wide was 2-7x slower per token and stayed near the
    # unigram loss in 2.5-minute trials) with small batches, so that it takes ~1000 steps.
    "small": Preset(
        vocab_size=4096,
        hidden=192,
        layers=4,
        heads=3,
        ffn=512,
        seq_len=512,
        batch=4,
        lr=3e-3,
        eval_lines=200,
        eval_tokens=30_000,
    ),
}
