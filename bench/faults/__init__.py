"""Faults Flywheel survives, measured: `flywheel bench faults` (bench/faults/suite.py)."""
