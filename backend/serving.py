"""The serving policy: the base model plus LoRA adapters (live and canary), sampled in batches.

One batch is one decoding loop over a KV cache: prompts left-padded, each row routed to its own
adapter through peft's mixed-adapter batches (`adapter_names=`), so canary and live rows share a
forward pass; a complete row leaves the batch at once.
Every call on the model runs on one worker thread (backend/batching.py), so an adapter is
installed or dropped only between batches, never inside one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend import stops
from backend.prompts import FimFormat, build_prompt_ids, detect_fim_format
from backend.wire import BASE_VERSION

log = logging.getLogger(__name__)

# peft's name for "no adapter" in a mixed-adapter batch.
PEFT_BASE = "__base__"


@dataclass
class Sample:
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    token_logprobs: list[float]
    model_version: str


@dataclass
class Request:
    prefix: str
    suffix: str
    max_new_tokens: int | None
    user_id: str


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


def in_canary(user_id: str, share: float) -> bool:
    """Sticky routing: a user's hash puts them in the canary slice for every request."""
    bucket = int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big") / 2**64
    return bucket < share


def prepare_adapter(version: str, path: Path) -> PreparedAdapter:
    from peft import LoraConfig
    from safetensors.torch import load_file

    return PreparedAdapter(
        version, LoraConfig.from_pretrained(str(path)), load_file(str(path / "adapter_model.safetensors"))
    )


class _RowStop:
    """Where one row ends: its end of line or block, EOS, or its token cap.

    The text grows one decoded token at a time (decoding the whole row at every step cost more
    than a small model's forward pass); only a new newline can end a line or a block.
    """

    def __init__(self, tokenizer: Any, mid_line: bool, line_prefix: str, cap: int, eos: int) -> None:
        self.tokenizer = tokenizer
        self.mid_line, self.line_prefix, self.cap, self.eos = mid_line, line_prefix, cap, eos
        self.text = ""
        self.tokens = 0

    def add(self, token: int) -> bool:
        """Takes the next sampled token; True when the row is complete with it."""
        self.tokens += 1
        piece = self.tokenizer.decode([token], skip_special_tokens=True)
        self.text += piece
        return (
            token == self.eos
            or self.tokens >= self.cap
            or ("\n" in piece and stops.stop_index(self.text, self.mid_line, self.line_prefix) is not None)
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

    @property
    def version(self) -> str:
        return self.live

    def installed(self) -> set[str]:
        return set(getattr(self.model, "peft_config", {}))

    def install(self, adapter: PreparedAdapter) -> None:
        """Add a prepared adapter under its version name (idempotent)."""
        from peft import PeftModel, set_peft_model_state_dict

        if adapter.version in self.installed():
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

    def route(self, live: str, canary: str | None, canary_share: float) -> None:
        """Serve `live` (and `canary` to its share of users) from the next batch on."""
        for version in (live, canary):
            if version not in (None, BASE_VERSION) and version not in self.installed():
                raise ValueError(f"adapter {version} is not installed")
        self.live, self.canary, self.canary_share = live, canary, canary_share
        # Adapters nobody is routed to any more are freed (peft keeps at least one installed).
        for stale in sorted(self.installed() - {live, canary}):
            if len(self.installed()) > 1:
                self.model.delete_adapter(stale)
        log.info("serving live %s, canary %s (share %.2f)", live, canary, canary_share)

    def version_for(self, user_id: str) -> str:
        if self.canary is not None and in_canary(user_id, self.canary_share):
            return self.canary
        return self.live

    @torch.inference_mode()
    def complete_batch(
        self, requests: list[Request], on_sample: Callable[[int, Sample], None] | None = None
    ) -> list[Sample]:
        """Samples every request's completion in one decoding loop. A row leaves the batch (and its
        KV cache) as soon as it is complete, and `on_sample(row, sample)` hears of it then, so a
        short completion is not held back by the longest one."""
        prompts = [
            build_prompt_ids(self.tokenizer, self.fim, r.prefix, r.suffix, self.context_tokens)
            for r in requests
        ]
        versions = [self.version_for(r.user_id) for r in requests]
        width = max(len(p) for p in prompts)
        # Left padding: every row's next token sits in the same column.
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
        row_stops = [
            _RowStop(
                self.tokenizer,
                stops.is_mid_line(r.prefix),
                r.prefix.rsplit("\n", 1)[-1],
                r.max_new_tokens or self.max_new_tokens,
                self.eos_token_id,
            )
            for r in requests
        ]
        adapters = [PEFT_BASE if v == BASE_VERSION else v for v in versions]
        tokens: list[list[int]] = [[] for _ in requests]
        logprobs: list[list[float]] = [[] for _ in requests]
        samples: list[Sample | None] = [None] * len(requests)

        active = list(range(len(requests)))  # batch row → request index
        attention = attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        step_ids, cache = input_ids.to(self.device), None
        while active:
            extra = {"adapter_names": [adapters[i] for i in active]} if self.installed() else {}
            out = self.model(
                input_ids=step_ids,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                **extra,
            )
            cache = out.past_key_values
            # Sampled from softmax(logits / T) itself (no top-k/top-p), so the recorded
            # log-probabilities are exactly those of the distribution sampled from.
            step_logprobs = torch.log_softmax(out.logits[:, -1].float() / self.temperature, dim=-1)
            # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) picks i with probability p_i.
            race = step_logprobs.exp() / torch.empty_like(step_logprobs).exponential_()
            chosen = race.argmax(dim=-1)
            chosen_logprobs = step_logprobs.gather(-1, chosen[:, None])[:, 0].tolist()
            keep = []
            for batch_row, (index, token) in enumerate(zip(active, chosen.tolist(), strict=True)):
                tokens[index].append(token)
                logprobs[index].append(chosen_logprobs[batch_row])
                if row_stops[index].add(token):
                    samples[index] = self._sample(
                        prompts[index], tokens[index], logprobs[index], versions[index], row_stops[index]
                    )
                    if on_sample is not None:
                        on_sample(index, samples[index])
                else:
                    keep.append(batch_row)
            if len(keep) < len(active):
                if not keep:
                    break
                kept = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(kept)
                attention, chosen, positions = attention[kept], chosen[kept], positions[kept]
                active = [active[b] for b in keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            positions = positions[:, -1:] + 1
            step_ids = chosen[:, None]
        return [sample for sample in samples if sample is not None]

    def _sample(
        self, prompt: list[int], tokens: list[int], logprobs: list[float], version: str, stop: _RowStop
    ) -> Sample:
        raw = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Sample(
            text=stops.finish(raw, stop.mid_line, stop.line_prefix),
            prompt_ids=prompt,
            completion_ids=tokens,
            token_logprobs=logprobs,
            model_version=version,
        )
