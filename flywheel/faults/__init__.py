"""Faults Flywheel survives, measured: `flywheel bench faults` (flywheel/faults/bench.py)."""
