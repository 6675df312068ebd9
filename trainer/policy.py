"""Loading the policy: the base model with a trainable LoRA adapter, fresh or continued."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from core.config import TrainerConfig

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"trainer.device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def load_policy(
    base_model: str,
    adapter_dir: Path | None,
    config: TrainerConfig,
    device: torch.device,
    lora: LoraConfig | None = None,
) -> PeftModel:
    """The base model plus a trainable adapter: `adapter_dir`'s, or a fresh one when None (shaped
    by `lora` when given, else by the configuration).

    A fresh LoRA starts with B = 0, so the policy equals the base model until it is trained.
    """
    # bf16 halves memory on GPU; on CPU bf16 matmuls are slow and imprecise, so fp32 there.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype).to(device)
    if adapter_dir is None:
        lora = lora or LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            target_modules=config.lora_target_modules,
            # No dropout: the trainer's log-probs must equal serving's for the importance ratio.
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, lora)
    else:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    # Eval mode for the same reason as no dropout: on-policy episodes must score a ratio of 1.
    model.eval()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "policy %s + %s adapter on %s (%d trainable parameters)",
        base_model,
        adapter_dir or "fresh",
        device,
        trainable,
    )
    return model
