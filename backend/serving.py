"""The serving policy: the base model plus the live LoRA adapter, sampled for inline completion.

All model work (sampling, loading and switching adapters) runs on one worker thread, so a swap
never lands in the middle of a generation and the event loop never blocks on the model.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

from backend import stops
from backend.prompts import FimFormat, build_prompt_ids, detect_fim_format
from backend.wire import BASE_VERSION

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Sample:
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    token_logprobs: list[float]


def pick_device(configured: str) -> torch.device:
    if configured == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(configured)


class _StopAtBoundary(StoppingCriteria):
    """Stops generation once the decoded text has reached its end of line or end of block."""

    def __init__(self, tokenizer: Any, prompt_length: int, mid_line: bool, line_prefix: str) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.mid_line = mid_line
        self.line_prefix = line_prefix

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        done = []
        for row in input_ids:
            text = self.tokenizer.decode(row[self.prompt_length :], skip_special_tokens=True)
            done.append(stops.stop_index(text, self.mid_line, self.line_prefix) is not None)
        return torch.tensor(done, device=input_ids.device)


class Policy:
    """A causal LM loaded through transformers, with peft adapters switched by version."""

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
        self.version = BASE_VERSION
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        self.eos_token_id = eos
        # top_k=0 and top_p=1 switch off transformers' default truncation, so the recorded
        # log-probabilities are exactly those of the distribution we sampled from.
        self.sampling: dict[str, Any] = dict(
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=eos,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
        )

    def use_adapter(self, version: str, path: Path | None) -> None:
        """Serve `version` from now on: an adapter directory, or the bare base model."""
        from peft import PeftModel

        if version == BASE_VERSION or path is None:
            self.version = BASE_VERSION
            return
        if isinstance(self.model, PeftModel):
            if version not in self.model.peft_config:
                self.model.load_adapter(str(path), adapter_name=version)
            self.model.set_adapter(version)
        else:
            self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=version)
        self.model.eval()
        previous = self.version
        self.version = version
        if previous != BASE_VERSION and previous != version and previous in self.model.peft_config:
            self.model.delete_adapter(previous)
        log.info("serving %s (was %s)", version, previous)

    def _adapter_context(self) -> Any:
        from contextlib import nullcontext

        if self.version == BASE_VERSION and self.model is not self.base:
            return self.model.disable_adapter()
        return nullcontext()

    @torch.inference_mode()
    def complete(self, prefix: str, suffix: str, max_new_tokens: int | None = None) -> Sample:
        prompt_ids = build_prompt_ids(self.tokenizer, self.fim, prefix, suffix, self.context_tokens)
        mid_line = stops.is_mid_line(prefix)
        line_prefix = prefix.rsplit("\n", 1)[-1]
        input_ids = torch.tensor([prompt_ids], device=self.device)
        stopper = _StopAtBoundary(self.tokenizer, len(prompt_ids), mid_line, line_prefix)
        with self._adapter_context():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **self.sampling,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                stopping_criteria=[stopper],
            )
        completion_ids = out.sequences[0, len(prompt_ids) :].tolist()
        logprobs = []
        for step, token in enumerate(completion_ids):
            step_logprobs = torch.log_softmax(out.logits[step][0].float() / self.temperature, dim=-1)
            logprobs.append(float(step_logprobs[token]))
        raw = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
        return Sample(
            text=stops.finish(raw, mid_line, line_prefix),
            prompt_ids=prompt_ids,
            completion_ids=completion_ids,
            token_logprobs=logprobs,
        )


class PolicyWorker:
    """Runs every call on the policy on one dedicated thread, in arrival order."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def complete(self, prefix: str, suffix: str, max_new_tokens: int | None = None) -> Sample:
        return await self.run(self.policy.complete, prefix, suffix, max_new_tokens)

    async def use_adapter(self, version: str, path: Path | None) -> None:
        await self.run(self.policy.use_adapter, version, path)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
