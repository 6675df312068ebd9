"""Fill-in-the-middle prompt formats per model family, and the context budget.

Each family spells FIM with its own special tokens; the bootstrapped model uses the `flywheel`
format, which `trainer.bootstrap` trains with. No heavy imports: a tokenizer is passed in.

With nothing but blanks after the cursor (writing at the end of a file) the prompt is the prefix
alone: a causal code model continues text left to right better than it fills a middle before an
empty suffix, which it rarely saw in training (the bootstrapped model, asked that way, mostly
ignores the end of the prefix and starts a new line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FimFormat:
    name: str
    prefix: str
    suffix: str
    middle: str

    def text(self, prefix: str, suffix: str) -> str:
        """Prefix-suffix-middle order (PSM), which every family below supports."""
        if not self.prefix or not suffix.strip():
            return prefix
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"


FIM_FORMATS: dict[str, FimFormat] = {
    "flywheel": FimFormat("flywheel", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    "starcoder": FimFormat("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    "qwen": FimFormat("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    "codellama": FimFormat("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>"),
    "none": FimFormat("none", "", "", ""),
}
# The bootstrapped model's special tokens, in vocabulary order after the end-of-text token.
FLYWHEEL_SPECIAL_TOKENS = ["<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<pad>"]


def detect_fim_format(tokenizer: Any, configured: str = "auto") -> FimFormat:
    """The configured format, or the first one whose tokens are all in the tokenizer's vocabulary."""
    if configured != "auto":
        if configured not in FIM_FORMATS:
            raise ValueError(
                f"unknown fim format {configured!r}; choose one of {sorted(FIM_FORMATS)} or auto"
            )
        return FIM_FORMATS[configured]
    vocab = tokenizer.get_vocab()
    for name in ("qwen", "flywheel", "codellama"):
        fmt = FIM_FORMATS[name]
        if all(token in vocab for token in (fmt.prefix, fmt.suffix, fmt.middle)):
            return fmt
    return FIM_FORMATS["none"]


def build_prompt_ids(
    tokenizer: Any, fmt: FimFormat, prefix: str, suffix: str, budget_tokens: int
) -> list[int]:
    """Token ids of the FIM prompt, keeping the text nearest the cursor within the budget.

    Three quarters of the budget go to the prefix (what the line continues from), the rest to the
    suffix; an unused share of either goes to the other.
    """
    # Cut by characters first so a huge file never reaches the tokenizer whole (≥ 1 char per token).
    prefix = prefix[-budget_tokens * 8 :]
    suffix = suffix[: budget_tokens * 8]

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) if text else []

    fim = bool(fmt.prefix and suffix.strip())
    prefix_ids = encode(prefix)
    suffix_ids = encode(suffix) if fim else []
    specials = [encode(token) for token in (fmt.prefix, fmt.suffix, fmt.middle) if token and fim]
    budget = max(budget_tokens - sum(len(ids) for ids in specials), 8)
    suffix_share = min(len(suffix_ids), max(budget // 4, budget - len(prefix_ids)))
    prefix_share = budget - suffix_share
    prefix_ids = prefix_ids[-prefix_share:] if prefix_share else []
    suffix_ids = suffix_ids[:suffix_share]
    # Families such as CodeLlama expect their begin-of-sequence token; the bootstrapped one has none.
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    if not fim:
        ids = bos + prefix_ids if fmt.prefix else prefix_ids
        # At the start of an empty file there is no text to continue: the model reads the start
        # of a document (its begin token, else the end-of-sequence token that separated the
        # documents it was trained on). A forward pass over no tokens at all fails.
        return ids or bos or [tokenizer.eos_token_id]
    fim_prefix, fim_suffix, fim_middle = specials
    return bos + fim_prefix + prefix_ids + fim_suffix + suffix_ids + fim_middle
