"""The bootstrap's training sequences: left-to-right windows, and fill-in-the-middle rewrites whose
middles are mostly the rest of a line or a few lines, as an editor asks."""

from __future__ import annotations

import random
from bisect import bisect_right
from typing import Any

import torch

from core.prompts import FIM_FORMATS, build_prompt_ids
from trainer.bootstrap.presets import Preset
from trainer.bootstrap.tokenizer import FIM_MIDDLE, FIM_SUFFIX

FIM = FIM_FORMATS["flywheel"]


class Samples:
    """Training sequences: left-to-right windows of the token stream, or FIM rewrites of a document."""

    def __init__(self, tokenizer: Any, texts: list[str], preset: Preset, seed: int) -> None:
        self.tokenizer = tokenizer
        self.texts = texts
        self.preset = preset
        self.rng = random.Random(seed)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        self.fim_ids = {tokenizer.convert_tokens_to_ids(t) for t in (FIM_SUFFIX, FIM_MIDDLE)}
        stream: list[int] = []
        self.doc_starts: list[int] = []
        for encoding in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
            self.doc_starts.append(len(stream))
            stream += [*encoding.ids, self.eos]
        self.stream = torch.tensor(stream, dtype=torch.long)

    @property
    def tokens(self) -> int:
        return len(self.stream)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        fim_rate = self.preset.fim_rate
        rows = [self.fim() if self.rng.random() < fim_rate else self.left_to_right() for _ in range(size)]
        ids = torch.stack([r[0] for r in rows])
        return ids, torch.stack([r[1] for r in rows])

    def left_to_right(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.preset.seq_len
        start = self.rng.randrange(max(len(self.stream) - n, 1))
        ids = self.stream[start : start + n]
        return self._pad(ids.tolist())

    def fim(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Documents drawn in proportion to their length, as the left-to-right windows are.
        doc = bisect_right(self.doc_starts, self.rng.randrange(len(self.stream))) - 1
        text = self.texts[doc]
        start, end = self.middle_span(text)
        middle_ids = self.tokenizer.encode(text[start:end], add_special_tokens=False)
        if len(middle_ids) < self.preset.max_middle:
            middle_ids.append(self.eos)  # the model learns to stop where the middle ends
        else:
            middle_ids = middle_ids[: self.preset.max_middle]
        budget = self.preset.seq_len - len(middle_ids)
        prompt = build_prompt_ids(self.tokenizer, FIM, text[:start], text[end:], budget)
        return self._pad((prompt + middle_ids)[: self.preset.seq_len])

    def middle_span(self, text: str) -> tuple[int, int]:
        """Character span of the middle: mostly the rest of a line or whole lines, as editors ask."""
        rng = self.rng
        line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        # A non-blank line, found by a few random tries (blank lines are a minority).
        for _ in range(8):
            li = rng.randrange(len(line_starts))
            ls = line_starts[li]
            le = text.find("\n", ls)
            le = len(text) if le < 0 else le
            if text[ls:le].strip():
                break
        indent = ls + len(text[ls:le]) - len(text[ls:le].lstrip())
        mode = rng.random()
        if mode < 0.4:  # the rest of the line, from a cursor inside it
            return rng.randint(indent, max(indent, le - 1)), le
        if mode < 0.8:  # one to three whole lines, indentation included, without the last newline
            k = min(1 + int(rng.expovariate(1.2)), len(line_starts) - li)
            end = line_starts[li + k] - 1 if li + k < len(line_starts) else len(text)
            return ls, max(end, ls)
        # Anywhere: a span inside the line (text stays after the cursor), or a longer free span.
        if mode < 0.9 and le > indent + 1:
            a, b = sorted(rng.sample(range(indent, le + 1), 2))
            return a, b
        a = rng.randrange(len(text))
        return a, min(len(text), a + int(rng.expovariate(1 / 120)))

    def _pad(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.preset.seq_len
        labels = [-100 if t in self.fim_ids else t for t in ids]
        pad = n - len(ids)
        # Where the prompt is cut is arbitrary, so predicting <fim_suffix>/<fim_middle> is not taught.
        return torch.tensor(ids + [self.pad] * pad), torch.tensor(labels + [-100] * pad)
