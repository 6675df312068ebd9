"""The model the suites that train run on, when no `--model` is given."""

from __future__ import annotations

from pathlib import Path

from core.config import Settings


def local_model(settings: Settings) -> str:
    """The configured model if it is a directory here, else the bootstrapped one: the trainer
    fine-tunes files it opens, so a Hub id will not do."""
    for candidate in (settings.model.name, str(settings.default_model_dir)):
        if candidate and (Path(candidate) / "config.json").is_file():
            return candidate
    raise SystemExit("no default model: run `flywheel bootstrap` first, or pass --model DIR")
