"""The serving policy: the base model plus LoRA adapters (live and canary), sampled in batches.

One batch is one `generate` call: prompts left-padded, each row routed to its own adapter through
peft's mixed-adapter batches (`adapter_names=`), so canary and live rows share a forward pass.
Every call on the model runs on one worker thread (backend/batching.py), so an adapter is
installed or dropped only between batches, never inside one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

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


class _StopAtBoundary(StoppingCriteria):
    """Per row: stops once the decoded text reaches its end of line or block, EOS, or its token cap.

    Records how many tokens each row had when it stopped: after that generate pads the row.
    """

    def __init__(self, tokenizer: Any, prompt_length: int, rows: list[tuple[bool, str, int]], eos: int):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.rows = rows
        self.eos = eos
        self.lengths: list[int | None] = [None] * len(rows)
        # Each row's text so far, one decoded token at a time: decoding the whole row at every
        # step cost more than the forward pass of a small model.
        self.texts = [""] * len(rows)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        last = input_ids[:, -1].tolist()
        for index, (mid_line, line_prefix, cap) in enumerate(self.rows):
            if self.lengths[index] is not None:
                continue
            piece = self.tokenizer.decode([last[index]], skip_special_tokens=True)
            self.texts[index] += piece
            # Where a completion ends depends on its newlines only, so only a new one can end it.
            if (
                last[index] == self.eos
                or generated >= cap
                or ("\n" in piece and stops.stop_index(self.texts[index], mid_line, line_prefix) is not None)
            ):
                self.lengths[index] = generated
        return torch.tensor([length is not None for length in self.lengths], device=input_ids.device)


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
        # top_k=0 and top_p=1 switch off transformers' default truncation, so the recorded
        # log-probabilities are exactly those of the distribution we sampled from.
        self.sampling: dict[str, Any] = dict(
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=eos,
            pad_token_id=self.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )

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
    def complete_batch(self, requests: list[Request]) -> list[Sample]:
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
        caps = [r.max_new_tokens or self.max_new_tokens for r in requests]
        rows = [
            (stops.is_mid_line(r.prefix), r.prefix.rsplit("\n", 1)[-1], cap)
            for r, cap in zip(requests, caps, strict=True)
        ]
        stopper = _StopAtBoundary(self.tokenizer, width, rows, self.eos_token_id)
        extra: dict[str, Any] = {}
        if self.installed():
            extra["adapter_names"] = [PEFT_BASE if v == BASE_VERSION else v for v in versions]
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            **self.sampling,
            max_new_tokens=max(caps),
            stopping_criteria=[stopper],
            **extra,
        )
        # Log-probabilities of every sampled token, all rows and steps at once: [rows, steps].
        generated = out.sequences[:, width:]
        scaled = torch.stack(out.logits, dim=1).float() / self.temperature
        sampled_logprobs = torch.log_softmax(scaled, dim=-1).gather(-1, generated[..., None])[..., 0]
        samples = []
        for row, (prompt, version) in enumerate(zip(prompts, versions, strict=True)):
            length = stopper.lengths[row] or generated.shape[1]
            completion_ids = generated[row, :length].tolist()
            logprobs = sampled_logprobs[row, :length].tolist()
            mid_line, line_prefix, _ = rows[row]
            raw = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
            samples.append(
                Sample(
                    text=stops.finish(raw, mid_line, line_prefix),
                    prompt_ids=prompt,
                    completion_ids=completion_ids,
                    token_logprobs=logprobs,
                    model_version=version,
                )
            )
        return samples
