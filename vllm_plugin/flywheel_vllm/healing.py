"""Prompt healing on vLLM: a row's first tokens held to those that spell its healed text.

The rule is core/healing.py's (`TokenTexts.allowed`), the one the in-process engine applies
(backend/decoding.py), read from the repository (on the server's PYTHONPATH). It runs as a custom
logits processor of vLLM's V1 model runner (`--logits-processors
flywheel_vllm.healing:HealingLogitsProcessor`; Flywheel starts its servers with
VLLM_USE_V2_MODEL_RUNNER=0 so the same interface serves CPU and GPU), after vLLM has taken the raw
log-probs, which therefore stay the model's unrestricted ones. A request asks for it with
`"vllm_xargs": {"flywheel_healed": TEXT}`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from flywheel_vllm import HEALED_ARG, TEMPERATURE_ARG, TEMPERATURE_ENV


class HealingLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        from transformers import AutoTokenizer

        from core.healing import TokenTexts  # the repository's, on PYTHONPATH
        from flywheel_vllm.temperature import active

        # This runs in the engine process, where the model is built: a temperature asked for and
        # not applied would record untempered log-probs, silently. Refuse to start instead.
        if os.environ.get(TEMPERATURE_ENV) and active() is None:
            raise RuntimeError(
                f"{TEMPERATURE_ENV} is set but Flywheel's vLLM plugin did not load in the engine "
                "process: install vllm_plugin/ into this environment"
            )
        config = vllm_config.model_config
        # Processed log-probs would be healing's masked ones, and the model's generation_config may
        # bring sampling rules (top-k, penalties) the recorded distribution does not have.
        if config.logprobs_mode != "raw_logprobs" or config.generation_config != "vllm":
            raise RuntimeError(
                "Flywheel's vLLM server needs --logprobs-mode raw_logprobs and --generation-config vllm "
                f"(has {config.logprobs_mode} and {config.generation_config})"
            )
        tokenizer = AutoTokenizer.from_pretrained(
            config.tokenizer, revision=config.tokenizer_revision, trust_remote_code=config.trust_remote_code
        )
        self.texts = TokenTexts(tokenizer, tokenizer.eos_token_id)
        self.device = device
        # Batch index -> (healed text, the row's output token ids: vLLM's live list).
        self.rows: dict[int, tuple[str, list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """At admission, in the API server's process (where the plugin is loaded too)."""
        from flywheel_vllm.temperature import active

        extra = sampling_params.extra_args or {}
        healed = extra.get(HEALED_ARG)
        if healed is not None and not isinstance(healed, str):
            raise ValueError(f"{HEALED_ARG} must be a string")
        asked = extra.get(TEMPERATURE_ARG)
        if asked is not None and active() != float(asked):
            raise ValueError(
                f"this vLLM server tempers its logits at {active()} ({TEMPERATURE_ENV} and Flywheel's vLLM "
                f"plugin), not at the {asked} the request is sampled at"
            )

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # In this order: removed, added, moved (vLLM's BatchUpdate contract).
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            healed = (params.extra_args or {}).get(HEALED_ARG) if params is not None else None
            if healed:
                self.rows[index] = (healed, output)
            else:
                self.rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        done = []
        for index, (healed, output) in self.rows.items():
            # A negative id is a token vLLM has not copied back yet (it replaces those before this runs).
            written = "".join(self.texts.text(token) for token in output if token >= 0)
            left = healed[len(written) :]
            if not left:
                done.append(index)
                continue
            # Ending is allowed as the first token (an abstention), not halfway (decoding.py).
            allowed = self.texts.allowed(left, may_end=not output)
            allowed = allowed[allowed < logits.shape[-1]].to(logits.device)
            keep = logits[index, allowed].clone()
            logits[index] = float("-inf")
            logits[index, allowed] = keep
        for index in done:
            del self.rows[index]
        return logits
