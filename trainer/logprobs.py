"""Per-token log-probabilities of sampled completions under a model, batched.

Each row is prompt + completion, right-padded. The logit at position p predicts token p + 1, so
completion token j of a row whose prompt has P tokens is scored by the logit at P − 1 + j. Only
those positions are projected onto the vocabulary (`logits_to_keep` as a [B, C] index tensor):
the [B, L, V] logits of a long prompt never exist, which matters with 150k-token vocabularies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class CompletionBatch:
    input_ids: Tensor  # [B, L] prompt + completion, right-padded
    attention_mask: Tensor  # [B, L]
    completion_ids: Tensor  # [B, C] right-padded
    completion_mask: Tensor  # [B, C] bool, False on padding
    positions: Tensor  # [B, C] index of the logit that scores each completion token
    temperatures: Tensor  # [B]

    def to(self, device: torch.device | str) -> CompletionBatch:
        return CompletionBatch(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def collate(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    temperatures: Sequence[float],
    pad_id: int = 0,
) -> CompletionBatch:
    if not len(prompts) == len(completions) == len(temperatures):
        raise ValueError("prompts, completions and temperatures differ in length")
    if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in completions):
        raise ValueError("every prompt and completion needs at least one token")
    batch = len(prompts)
    length = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    width = max(len(c) for c in completions)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    completion_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((batch, width), dtype=torch.bool)
    positions = torch.zeros((batch, width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        n = len(prompt) + len(completion)
        input_ids[row, :n] = torch.tensor([*prompt, *completion])
        attention_mask[row, :n] = 1
        completion_ids[row, : len(completion)] = torch.tensor(completion)
        completion_mask[row, : len(completion)] = True
        # Padding columns point at a real position of the row; their values are masked out.
        positions[row] = (len(prompt) - 1 + torch.arange(width)).clamp(max=length - 1)
    return CompletionBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        positions=positions,
        temperatures=torch.tensor(temperatures, dtype=torch.float32),
    )


def completion_logprobs(model: nn.Module, batch: CompletionBatch) -> Tensor:
    """[B, C] float32 log-probs of the completion tokens, as serving defines them:
    log_softmax(logits / temperature) with each row's own temperature; 0 on padding."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        logits_to_keep=batch.positions,
        use_cache=False,
    )
    logits = out.logits.float() / batch.temperatures[:, None, None]
    logps = torch.log_softmax(logits, dim=-1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)
    return torch.where(batch.completion_mask, logps, torch.zeros_like(logps))


def pad_rows(rows: Sequence[Sequence[float]], width: int) -> Tensor:
    """[B, width] float32 from ragged rows, zero-padded on the right."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.float32)
    return out
