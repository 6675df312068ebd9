"""Prompt building: the family's FIM tokens around prefix and suffix, the prefix alone before a blank
suffix, and a context budget that keeps the text nearest the cursor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from core.prompts import build_prompt_ids, detect_fim_format


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_a_suffix_is_framed_by_the_familys_fim_tokens(tokenizer: Any) -> None:
    fmt = detect_fim_format(tokenizer)
    assert fmt.name == "flywheel"
    special = [tokenizer.convert_tokens_to_ids(t) for t in (fmt.prefix, fmt.suffix, fmt.middle)]
    prefix, suffix = "def area(r):\n    return ", "\n\nprint(area(2))\n"
    assert build_prompt_ids(tokenizer, fmt, prefix, suffix, 384) == [
        special[0],
        *encode(tokenizer, prefix),
        special[1],
        *encode(tokenizer, suffix),
        special[2],
    ]


@pytest.mark.parametrize("suffix", ["", "\n", "\n   \n\n"])
def test_before_a_blank_suffix_the_prompt_is_the_prefix_alone(tokenizer: Any, suffix: str) -> None:
    fmt = detect_fim_format(tokenizer)
    prefix = "import os\nimport sys\n\nfor name in os.listdir(path):\n    if name."
    assert build_prompt_ids(tokenizer, fmt, prefix, suffix, 384) == encode(tokenizer, prefix)


def test_the_budget_keeps_the_text_nearest_the_cursor(tokenizer: Any) -> None:
    fmt = detect_fim_format(tokenizer)
    prefix = "".join(f"line_{i} = {i}\n" for i in range(300))
    suffix = "".join(f"after_{i} = {i}\n" for i in range(300))
    ids = build_prompt_ids(tokenizer, fmt, prefix, suffix, 120)
    assert len(ids) <= 120
    text = tokenizer.decode(ids)
    assert "line_299 = 299\n" in text and "line_0 =" not in text
    assert "after_0 = 0\n" in text and "after_299" not in text
    # Three quarters to the prefix when both are long.
    middle = ids.index(tokenizer.convert_tokens_to_ids(fmt.suffix))
    assert middle > 2 * (len(ids) - middle)
    # Alone, the prefix gets the whole budget.
    alone = build_prompt_ids(tokenizer, fmt, prefix, "", 120)
    assert 110 <= len(alone) <= 120 and tokenizer.decode(alone).endswith("line_299 = 299\n")


def test_an_empty_file_is_the_start_of_a_document(tokenizer: Any) -> None:
    """Nothing before the cursor and nothing after: the prompt is the document boundary the model
    knows, never no tokens (a forward pass over none fails, and with it the batch it joined)."""
    fmt = detect_fim_format(tokenizer)
    assert tokenizer.bos_token_id is None
    assert build_prompt_ids(tokenizer, fmt, "", "", 384) == [tokenizer.eos_token_id]
    assert build_prompt_ids(tokenizer, fmt, "", "\n", 384) == [tokenizer.eos_token_id]
