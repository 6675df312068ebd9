"""The gate's held-out episodes kept for the next cycle, by the cursor that cycle starts at."""

from __future__ import annotations

from pathlib import Path

from trainer_support import episode

from trainer.heldout_carry import load_carry, save_carry


def test_a_cycle_retried_before_its_upload_still_finds_the_set_it_started_with(tmp_path: Path) -> None:
    first = [episode(n, [1, 2], [3], [-1.0], 0.5) for n in range(1, 4)]
    second = [episode(n, [1, 2], [4], [-2.0], -0.25) for n in range(10, 12)]
    save_carry(tmp_path, 24, first, keep=0)
    assert load_carry(tmp_path, 24) == first
    # The next cycle (started at 24) saves its own for 48, then is killed before its upload: the
    # retry starts at 24 again and trains on the same set.
    save_carry(tmp_path, 48, second, keep=24)
    assert load_carry(tmp_path, 24) == first
    assert load_carry(tmp_path, 48) == second
    # Once the cursor is at 48 the set for 24 goes with the next save; none is saved for others.
    save_carry(tmp_path, 72, [], keep=48)
    assert load_carry(tmp_path, 24) == [] and load_carry(tmp_path, 48) == second
    assert load_carry(tmp_path, 60) == []
