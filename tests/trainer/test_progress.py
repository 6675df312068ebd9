"""Progress of long work: reports advance with the time left; a terminal gets a bar, anything else
plain lines; a PG update advances it once a step."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import select
import struct
import termios
from pathlib import Path

import pytest
import torch
from trainer_support import build_tokenizer, episode, one_thread, prompts, sample, save_tiny_model

from core.config import TrainerConfig
from trainer.objectives.pg import PGConfig
from trainer.policy import load_policy
from trainer.progress import Progress, ProgressReport
from trainer.update import train_on_episodes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reports_advance_with_the_time_left_and_plain_lines_off_a_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, reports = Clock(), []
    output = io.StringIO()
    progress = Progress("simulate", 10, unit="files", file=output, sink=reports.append, clock=clock)
    with caplog.at_level(logging.INFO, "flywheel.progress"), progress:
        for step in range(10):
            clock.now += 12.0  # 12 s a file
            progress.advance(status=f"cycle {step // 5}")
    assert [r.done for r in reports] == list(range(1, 11))
    assert reports[0] == ProgressReport("simulate", 1, 10, 12.0, 108.0, "cycle 0")
    assert [r.left_s for r in reports] == [12.0 * (10 - done) for done in range(1, 11)]
    # No bar off a terminal: a line every 30 s or so and one at the end.
    assert output.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "simulate: 3/10 files (30%) (cycle 0), 00:36 elapsed, about 01:24 left"
    assert lines[-1] == "simulate: 10/10 files (100%) (cycle 1), 02:00 elapsed, about 00:00 left"
    assert len(lines) == 4


def test_a_terminal_gets_a_bar() -> None:
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    with open(terminal, "w") as screen, open(controller, "rb", buffering=0) as reader:
        with Progress("update on 40 episodes", 5, file=screen) as progress:  # a real terminal: a pty
            for _ in range(5):
                progress.advance()
        screen.flush()
        shown = b""
        while select.select([reader], [], [], 0.5)[0]:
            shown += reader.read(65536)
    shown = shown.decode()
    assert "update on 40 episodes" in shown and "5/5" in shown
    assert "\r" in shown  # redrawn in place


@pytest.mark.usefixtures(one_thread.__name__)
def test_a_pg_update_advances_once_a_step(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "base")
    config = TrainerConfig(lora_r=4, lora_alpha=8)
    policy = load_policy(str(tmp_path / "base"), None, config, torch.device("cpu"))
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    episodes = [
        episode(i + 1, prompt, completion, logps, 1.0 if completion[0] % 2 == 0 else -1.0)
        for prompt in prompts(tokenizer)
        for i, (completion, logps) in enumerate(
            sample(policy, prompt, 1.0, tokenizer.eos_token_id, max_new_tokens=2, n=4)
        )
    ]
    steps = 2 * -(-len(episodes) // 4)
    reports: list[ProgressReport] = []
    with Progress("update", steps, file=io.StringIO(), sink=reports.append) as progress:
        metrics = train_on_episodes(
            policy, episodes, PGConfig(), learning_rate=1e-3, batch_size=4, epochs=2, progress=progress
        )
    assert metrics["steps"] == steps
    assert [r.done for r in reports] == list(range(1, steps + 1))
    assert reports[-1].left_s == 0.0
