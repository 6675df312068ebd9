"""The in-process engine's model: the base model plus the LoRA adapters installed by version.

Requests are decoded in one continuous loop over a KV cache (backend/decoding.py): each row runs
under its own adapter through peft's mixed-adapter batches (`adapter_names=`), so canary and live
rows share a forward pass. Which version serves whom is decided above the engine
(backend/routing.py). The model lives in its own process (backend/model_process.py), whose one
loop runs every call on it in turn, so an adapter is installed or removed only between two steps,
never inside one, and never while a row uses it.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend.engine import EngineInfo
from core.prompts import FimFormat, detect_fim_format

log = logging.getLogger(__name__)

# peft's name for "no adapter" in a mixed-adapter batch.
PEFT_BASE = "__base__"


@dataclass
class PreparedAdapter:
    """An adapter read from disk off the worker thread: installing it is then only a copy."""

    version: str
    config: Any
    weights: dict[str, torch.Tensor]


def pick_device(configured: str) -> torch.device:
    if configured == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(configured)


def cache_keyword(model: Any) -> str:
    """The forward argument that takes the KV cache: `cache` from transformers 5.x on, where
    `past_key_values` is deprecated (and goes in 5.40), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The KV cache a forward pass returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def use_cpu_threads(configured: int) -> int:
    """Set torch's threads for serving on a CPU: `configured`, or every core this process may
    use but one. Returns the number set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = configured or max(1, cores - 1)
    torch.set_num_threads(threads)
    return threads


def prepare_adapter(version: str, path: Path) -> PreparedAdapter:
    from peft import LoraConfig
    from safetensors.torch import load_file

    return PreparedAdapter(
        version, LoraConfig.from_pretrained(str(path)), load_file(str(path / "adapter_model.safetensors"))
    )


class Policy:
    """A causal LM loaded through transformers, with peft adapters installed by version."""

    def __init__(
        self,
        model_name: str,
        *,
        fim: str = "auto",
        temperature: float = 0.7,
        max_new_tokens: int = 48,
        context_tokens: int = 384,
        device: str = "auto",
    ) -> None:
        self.model_name = model_name
        self.device = pick_device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_name)
        self.base = AutoModelForCausalLM.from_pretrained(model_name, dtype=dtype).to(self.device).eval()
        self.model: Any = self.base
        self.cache_keyword = cache_keyword(self.base)
        self.fim: FimFormat = detect_fim_format(self.tokenizer, fim)
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.context_tokens = context_tokens
        eos = self.tokenizer.eos_token_id
        self.eos_token_id = eos
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        # Rows decoding (or waiting to) under each version: an adapter is freed only when none is left.
        self._in_use: Counter[str] = Counter()
        # Versions to free once no row uses them.
        self._removing: set[str] = set()

    def installed(self) -> set[str]:
        return set(getattr(self.model, "peft_config", {}))

    def info(self) -> EngineInfo:
        return EngineInfo(self.temperature, self.fim.name)

    def hold(self, version: str) -> None:
        """A row decodes under `version` until `release`: it is not freed meanwhile."""
        self._in_use[version] += 1

    def release(self, version: str) -> None:
        self._in_use[version] -= 1
        if not self._in_use[version]:
            del self._in_use[version]

    def in_use(self, version: str) -> int:
        return self._in_use[version]

    def keep(self, version: str) -> bool:
        """Whether `version` is installed; if so it is kept, through any prune, until it is
        removed again (it is wanted: a request under it comes next)."""
        self._removing.discard(version)
        return version in self.installed()

    def install(self, adapter: PreparedAdapter) -> None:
        """Add a prepared adapter under its version name (idempotent)."""
        from peft import PeftModel, set_peft_model_state_dict

        if self.keep(adapter.version):
            return
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(adapter.version, adapter.config)
        else:
            self.model = PeftModel(self.base, adapter.config, adapter_name=adapter.version)
        result = set_peft_model_state_dict(self.model, adapter.weights, adapter_name=adapter.version)
        missing = [key for key in result.missing_keys if "lora_" in key and adapter.version in key]
        if missing:
            self.model.delete_adapter(adapter.version)
            raise ValueError(f"adapter {adapter.version} lacks weights such as {missing[0]}")
        self.model.eval()

    def remove(self, version: str) -> None:
        """Free `version` at the next `prune` that finds no row using it."""
        self._removing.add(version)

    def prune(self, waiting: Collection[str] = ()) -> None:
        """Free the versions being removed that no running row uses, nor a request `waiting` to join."""
        for version in sorted(self._removing):
            if self._in_use[version] or version in waiting:
                continue
            self._removing.discard(version)
            if version in self.installed() and len(self.installed()) > 1:  # peft keeps one
                self.model.delete_adapter(version)
