"""The serving policy: the base model plus LoRA adapters (live and canary), sampled in batches.

Requests are decoded in one continuous loop over a KV cache (backend/decoding.py): each row is
routed to its own adapter through peft's mixed-adapter batches (`adapter_names=`), so canary and
live rows share a forward pass; a complete row leaves at once and new requests join between steps.
The model lives in its own process (backend/model_process.py), whose one loop runs every call on
it in turn, so an adapter is installed or dropped only between two steps, never inside one, and
never while a row uses it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend.model_messages import Cut, PolicyState
from core.prompts import FimFormat, detect_fim_format
from core.wire import BASE_VERSION, CHECKPOINT_METADATA, CheckpointMetadata

log = logging.getLogger(__name__)

# peft's name for "no adapter" in a mixed-adapter batch.
PEFT_BASE = "__base__"


@dataclass
class PreparedAdapter:
    """An adapter read from disk off the worker thread: installing it is then only a copy."""

    version: str
    config: Any
    weights: dict[str, torch.Tensor]
    # The version's learned serving rules (CheckpointMetadata); none by default.
    cut: Cut = field(default_factory=Cut)


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


def in_canary(user_id: str, share: float) -> bool:
    """Sticky routing: a user's hash puts them in the canary slice for every request."""
    bucket = int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big") / 2**64
    return bucket < share


def prepare_adapter(version: str, path: Path) -> PreparedAdapter:
    from peft import LoraConfig
    from safetensors.torch import load_file

    metadata = path / CHECKPOINT_METADATA
    cut = Cut()
    if metadata.is_file():
        meta = CheckpointMetadata.model_validate_json(metadata.read_text())
        cut = Cut(meta.stop_logprob, meta.min_confidence)
    return PreparedAdapter(
        version,
        LoraConfig.from_pretrained(str(path)),
        load_file(str(path / "adapter_model.safetensors")),
        cut,
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
        self.live = BASE_VERSION
        self.canary: str | None = None
        self.canary_share = 0.0
        eos = self.tokenizer.eos_token_id
        self.eos_token_id = eos
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        # Each installed version's learned serving rules (PreparedAdapter.cut), where it has any.
        self.cuts: dict[str, Cut] = {}
        # Rows decoding under each version: an adapter is freed only when none is left.
        self.in_use: Counter[str] = Counter()
        self._routed_away: set[str] = set()

    @property
    def version(self) -> str:
        return self.live

    def installed(self) -> set[str]:
        return set(getattr(self.model, "peft_config", {}))

    def state(self) -> PolicyState:
        return PolicyState(
            self.live,
            self.canary,
            self.canary_share,
            self.temperature,
            self.fim.name,
            dict(self.cuts),
        )

    def keep(self, version: str) -> bool:
        """Whether `version` is installed; if so it is kept, through any prune, until a route
        routes it away again (it is wanted: a route to it comes next)."""
        self._routed_away.discard(version)
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
        if adapter.cut != Cut():
            self.cuts[adapter.version] = adapter.cut
        self.model.eval()

    def route(self, live: str, canary: str | None, canary_share: float) -> None:
        """Serve `live` (and `canary` to its share of users) from the next batch on."""
        for version in (live, canary):
            if version not in (None, BASE_VERSION) and version not in self.installed():
                raise ValueError(f"adapter {version} is not installed")
        self._routed_away |= self.installed() - {live, canary}
        self.live, self.canary, self.canary_share = live, canary, canary_share
        self.prune()
        log.info("serving live %s, canary %s (share %.2f)", live, canary, canary_share)

    def version_for(self, user_id: str) -> str:
        if self.canary is not None and in_canary(user_id, self.canary_share):
            return self.canary
        return self.live

    def prune(self) -> None:
        """Free the adapters routed away from that no running row uses any more. One installed but
        not yet routed to (a swap between its install and its route) is kept."""
        for version in sorted(self._routed_away):
            if version in (self.live, self.canary):
                self._routed_away.discard(version)
            elif self.in_use[version] == 0:
                self._routed_away.discard(version)
                if version in self.installed() and len(self.installed()) > 1:  # peft keeps one
                    self.model.delete_adapter(version)
                    self.cuts.pop(version, None)
