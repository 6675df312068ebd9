"""Continuous batching: one decoding loop over a KV cache that requests join and leave between steps.

A request joining is prefilled on its own (its prompt, left-padded with the others joining with
it), samples its first token, and is then spliced into the running batch: both caches are
left-padded to the same length and stacked, and the padding is masked out. A complete row leaves
the batch (and the cache) at once, so no request waits for a longer one, and a free slot is
filled at the next step instead of when the whole batch is done.

Sampling is from softmax(logits / T) itself (no top-k/top-p), so the recorded log-probabilities
are exactly those of the distribution sampled from. The rules a request brings as data
(backend/engine.py), decided above the engine, act here per token: while a row rewrites its healed
text (core/healing.py) the tokens that cannot spell it are masked out (the recorded log-probs stay
the model's own); a row ends at its stop (backend/stops.py) or before the first sampled token below
its version's learned cut (trainer/stopping.py); and a row whose first tokens fall below its
confidence floor leaves the batch then, since none of it will be shown (the floor itself is
applied above the engine, backend/completions.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

from backend import stops
from backend.engine import EngineRequest, Generation, cut_before, withheld_whatever_follows
from backend.serving import PEFT_BASE, Policy, returned_cache
from backend.show_decision import Showing
from core.healing import TokenTexts
from core.prompts import build_prompt_ids
from core.wire import BASE_VERSION


class RowStop:
    """Where one row ends: its end of line or block, EOS, or its token cap.

    The text grows one token's text at a time (decoding the whole row at every step cost more
    than a small model's forward pass); only a new newline can end a line or a block.
    """

    def __init__(self, texts: TokenTexts, mid_line: bool, line_prefix: str, cap: int, eos: int) -> None:
        self.texts = texts
        self.mid_line, self.line_prefix, self.cap, self.eos = mid_line, line_prefix, cap, eos
        self.text = ""
        self.tokens = 0

    def add(self, token: int) -> bool:
        """Takes the next sampled token; True when the row is complete with it."""
        self.tokens += 1
        piece = self.texts.text(token)
        self.text += piece
        return (
            token == self.eos
            or self.tokens >= self.cap
            or ("\n" in piece and stops.stop_index(self.text, self.mid_line, self.line_prefix) is not None)
        )


@dataclass
class Row:
    """One request being decoded; `key` is the caller's handle for it."""

    key: Any
    prompt: list[int]
    version: str
    stop: RowStop
    # Text typed before the cursor that the prompt leaves out and the completion must rewrite.
    healed: str = ""
    # The version's learned cut (EngineRequest).
    stop_logprob: float | None = None
    # How its completion is shown: the version's learned policy or its floor (EngineRequest).
    showing: Showing | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    # time.monotonic() when the model process took the request, and when its first token was drawn.
    received_at: float = 0.0
    first_token_at: float | None = None

    def healing_left(self) -> str:
        """What of the healed text is still to be written ("" once it is)."""
        return self.healed[len(self.stop.text) :]

    def cut_before(self, logprob: float) -> bool:
        return cut_before(self.stop_logprob, logprob)

    def withheld_whatever_follows(self) -> bool:
        """backend/engine.py's rule: here, decoding the rest would only hold a slot of the batch."""
        return withheld_whatever_follows(self.logprobs, self.showing)

    @property
    def adapter(self) -> str:
        return PEFT_BASE if self.version == BASE_VERSION else self.version


@dataclass
class _Batch:
    """Rows and their decoding state. The cache holds every row's past; `attention` also covers
    the pending token `next_ids` (one column more than the cache), `positions` is its position."""

    rows: list[Row]
    cache: Any
    attention: Tensor
    positions: Tensor
    next_ids: Tensor


class Decoding:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._batch: _Batch | None = None
        # Built before the first request: decoding every token of a large vocabulary takes a moment.
        self.token_texts = TokenTexts(policy.tokenizer, policy.eos_token_id)

    @property
    def size(self) -> int:
        return len(self._batch.rows) if self._batch else 0

    @property
    def columns(self) -> int:
        """How many positions the next step attends over, padding included."""
        return self._batch.attention.shape[1] if self._batch else 0

    def can_join(self) -> bool:
        """Whether requests may join now. Caches other than plain per-layer key/value tensors
        (sliding windows, recurrent state) cannot be spliced; those batches run until empty."""
        if self._batch is None:
            return True
        return _spliceable(self._batch.cache)

    @torch.inference_mode()
    def join(
        self, keyed: Sequence[tuple[Any, EngineRequest]], received: Mapping[Any, float] | None = None
    ) -> list[tuple[Any, Generation]]:
        """Prefill `keyed` requests and add them to the loop; those complete after their first
        token are returned at once. `received`: when each key arrived (time.monotonic(); now if
        absent), from which its time to first token counts."""
        policy = self.policy
        rows = [self._row(key, request) for key, request in keyed]
        now = time.monotonic()
        for row in rows:
            row.received_at = (received or {}).get(row.key, now)
        for row in rows:
            policy.hold(row.version)
        width = max(len(row.prompt) for row in rows)
        # Left padding: every row's next token sits in the same column.
        input_ids = torch.full((len(rows), width), policy.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
            attention[i, width - len(row.prompt) :] = 1
        attention = attention.to(policy.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        try:
            new, done = self._forward(rows, input_ids.to(policy.device), attention, positions, None)
        except BaseException:
            for row in rows:
                policy.release(row.version)
            raise
        if new is not None:
            self._batch = new if self._batch is None else _splice(self._batch, new)
        return done

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, Generation]]:
        """One token for every row; the rows complete with it, with their samples."""
        if self._batch is None:
            return []
        b = self._batch
        self._batch, done = self._forward(b.rows, b.next_ids, b.attention, b.positions, b.cache)
        return done

    def abandon(self) -> list[Any]:
        """Drop every row (after a failed step); their keys."""
        rows = self._batch.rows if self._batch else []
        for row in rows:
            self.policy.release(row.version)
        self._batch = None
        return [row.key for row in rows]

    def _row(self, key: Any, request: EngineRequest) -> Row:
        policy = self.policy
        healed = request.healed
        # A healed text these tokens cannot spell (a tokenizer whose pieces do not read back as
        # text) stays in the prompt rather than silence every answer.
        if healed and not len(self.token_texts.allowed(healed, may_end=False)):
            healed = ""
        prefix = request.prefix[: len(request.prefix) - len(healed)]
        prompt = build_prompt_ids(policy.tokenizer, policy.fim, prefix, request.suffix, policy.context_tokens)
        stop = RowStop(
            self.token_texts,
            request.stop.mid_line,
            request.stop.line_prefix(healed),
            request.stop.max_new_tokens or policy.max_new_tokens,
            policy.eos_token_id,
        )
        return Row(
            key,
            prompt,
            request.version,
            stop,
            healed,
            request.stop_logprob,
            request.showing,
        )

    def _forward(
        self, rows: list[Row], input_ids: Tensor, attention: Tensor, positions: Tensor, cache: Any
    ) -> tuple[_Batch | None, list[tuple[Any, Generation]]]:
        """Run the model on `input_ids`, sample each row's next token, retire complete rows; the
        batch of rows still running (None when none is) and the retired rows' samples."""
        policy = self.policy
        extra = {"adapter_names": [row.adapter for row in rows]} if policy.installed() else {}
        out = policy.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{policy.cache_keyword: cache},
            **extra,
        )
        logprobs = torch.log_softmax(out.logits[:, -1].float() / policy.temperature, dim=-1)
        chosen = sample_rows(self._healing_mask(rows, logprobs))
        chosen_logprobs = logprobs.gather(-1, chosen[:, None])[:, 0].tolist()
        drawn_at = time.monotonic()
        done: list[tuple[Any, Generation]] = []
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(rows, chosen.tolist(), strict=True)):
            # A token the version's cut rejects is not taken: the row ends before it (with
            # nothing to show when it was the first).
            cut = row.cut_before(chosen_logprobs[i])
            if row.first_token_at is None:
                row.first_token_at = drawn_at
            if not cut:
                row.tokens.append(token)
                row.logprobs.append(chosen_logprobs[i])
            if cut or row.stop.add(token) or row.withheld_whatever_follows():
                done.append((row.key, self._generation(row)))
                policy.release(row.version)
            else:
                keep.append(i)
        if not keep:
            return None, done
        cache = returned_cache(out)
        if len(keep) < len(rows):
            kept = torch.tensor(keep, device=policy.device)
            cache.batch_select_indices(kept)
            attention, chosen, positions = attention[kept], chosen[kept], positions[kept]
            attention = _trim_padding(cache, attention)
        attention = torch.cat([attention, attention.new_ones((len(keep), 1))], dim=1)
        batch = _Batch([rows[i] for i in keep], cache, attention, positions[:, -1:] + 1, chosen[:, None])
        return batch, done

    def _healing_mask(self, rows: list[Row], logprobs: Tensor) -> Tensor:
        """`logprobs` with −inf wherever a row still rewriting its healed text may not go."""
        masked = logprobs
        for i, row in enumerate(rows):
            if not (left := row.healing_left()):
                continue
            # Ending is allowed as the first token (an abstention), not halfway through the text.
            allowed = self.token_texts.allowed(left, may_end=not row.tokens)
            # A tokenizer may name more tokens than the model has logits for.
            allowed = allowed[allowed < logprobs.shape[-1]].to(logprobs.device)
            if masked is logprobs:
                masked = logprobs.clone()
            masked[i] = float("-inf")
            masked[i, allowed] = logprobs[i, allowed]
        return masked

    def _generation(self, row: Row) -> Generation:
        return Generation(
            version=row.version,
            prompt_ids=row.prompt,
            completion_ids=row.tokens,
            token_logprobs=row.logprobs,
            text=self.policy.tokenizer.decode(row.tokens, skip_special_tokens=True),
            healed=row.healed,
            first_token_s=None if row.first_token_at is None else row.first_token_at - row.received_at,
        )


def sample_rows(logprobs: Tensor) -> Tensor:
    """One token index per row, drawn with probability exp(logprob), renormalized over the
    tokens a mask left finite (the others are −inf, so their probability is 0).

    By inverting each row's cumulative distribution at one uniform draw: a draw per row, not per
    token (an exponential race draws one per token, and drawing 16 rows' worth took longer than
    the small model's forward pass). The sum runs in float64 so that rounding loses no token."""
    cdf = logprobs.double().exp().cumsum(dim=-1)
    draw = torch.rand((logprobs.shape[0], 1), dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    # `right`: the first token whose cumulative probability exceeds the draw (never a masked one:
    # its cumulative probability equals its predecessor's).
    return torch.searchsorted(cdf, draw, right=True)[:, 0].clamp(max=logprobs.shape[-1] - 1)


def _splice(running: _Batch, joining: _Batch) -> _Batch:
    """One batch of both: caches and masks left-padded to the same length, rows stacked."""
    length = max(running.attention.shape[1], joining.attention.shape[1])
    pad_running = length - running.attention.shape[1]
    pad_joining = length - joining.attention.shape[1]
    for mine, theirs in zip(running.cache.layers, joining.cache.layers, strict=True):
        mine.keys = torch.cat([_pad_left(mine.keys, pad_running), _pad_left(theirs.keys, pad_joining)])
        mine.values = torch.cat([_pad_left(mine.values, pad_running), _pad_left(theirs.values, pad_joining)])
    return _Batch(
        running.rows + joining.rows,
        running.cache,
        torch.cat([F.pad(running.attention, (pad_running, 0)), F.pad(joining.attention, (pad_joining, 0))]),
        torch.cat([running.positions, joining.positions]),
        torch.cat([running.next_ids, joining.next_ids]),
    )


def _spliceable(cache: Any) -> bool:
    """Plain per-layer key/value tensors, which rows can be cut from and padded into."""
    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _trim_padding(cache: Any, attention: Tensor) -> Tensor:
    """Drop the leading cache columns that are padding for every row left: under steady traffic
    the batch never empties, and without this its cache would grow by a column every step for as
    long as the traffic lasts, and every step would attend over all of it."""
    start = int(attention.any(dim=0).int().argmax())
    if start == 0 or not _spliceable(cache):
        return attention
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, start:]
        layer.values = layer.values[:, :, start:]
    return attention[:, start:]


def _pad_left(states: Tensor, n: int) -> Tensor:
    """Zeros before the sequence dimension (-2) of a (batch, heads, seq, head_dim) cache tensor."""
    return F.pad(states, (0, 0, n, 0)) if n else states
