"""What the TRL objectives share: episodes back to text, and running a TRL trainer on our policy.

TRL's trainers take text (prompt, completion) and tokenize it themselves, so the episode's token
ids are decoded, special tokens (the FIM markers) included, and TRL re-encodes them. With a PEFT
model TRL's reference is a frozen copy of the adapter as it was when the trainer started (an
adapter named "ref"): the parent version. That copy is removed afterwards, so the adapter saved
and uploaded is the trained one alone.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import TrainerCallback

from core.wire import Episode
from trainer.progress import Progress

REF_ADAPTER = "ref"


def prompt_text(tokenizer: Any, episode: Episode) -> str:
    return tokenizer.decode(episode.prompt_ids, skip_special_tokens=False)


class ProgressCallback(TrainerCallback):
    """TRL's own bar is off (disable_tqdm): its steps advance ours, which is plain lines off a terminal."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.progress: Progress | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress = Progress(self.description, state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.advance()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.close()


def run_trl(
    trainer_cls: type, args_cls: type, model: PeftModel, tokenizer: Any, rows: list[dict], **args: Any
) -> dict:
    """Trains `model` in place with a TRL trainer on `rows`; returns the trainer's train metrics."""
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="flywheel-trl-") as out:
        config = args_cls(
            output_dir=out,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=device.type != "cuda",
            bf16=device.type == "cuda",
            **args,
        )
        # datasets logs a progress bar per map(); the trainer's own figures are what we keep.
        logging.getLogger("datasets").setLevel(logging.WARNING)
        trainer = trainer_cls(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[ProgressCallback(f"update on {len(rows)} rows")],
        )
        try:
            metrics = trainer.train().metrics
        finally:
            if REF_ADAPTER in model.peft_config:
                model.delete_adapter(REF_ADAPTER)
            model.set_adapter("default")
    model.eval()
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    torch.set_grad_enabled(True)
    return {key: float(value) for key, value in metrics.items() if isinstance(value, int | float)}
