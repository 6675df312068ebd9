"""Prompt healing: what the prompt leaves out before the cursor, which tokens may rewrite it, and
what is shown after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from core.healing import MAX_HEALED_CHARS, TokenTexts, after_healed, healed_of, healed_text


@pytest.mark.parametrize(
    ("prefix", "healed"),
    [
        # Typed indentation on a blank line.
        ("def f():\n    ", "    "),
        ("x = 1\n\t", "\t"),
        ("  ", "  "),
        # A word that is all the line holds goes with its indentation.
        ("def f():\n    ret", "    ret"),
        ("imp", "imp"),
        # Mid-line, the word being typed with the blank before it.
        ("from os import pa", " pa"),
        ("x = self.na", "na"),
        ("print(va", "va"),
        # Nothing to heal: a fresh line, after punctuation, after a blank.
        ("x = 1\n", ""),
        ("", ""),
        ("x = f(", ""),
        ("x = ", ""),
        # A very long name is left in the prompt.
        ("x = " + "a" * (MAX_HEALED_CHARS + 1), ""),
    ],
)
def test_the_prompt_leaves_out_the_indentation_or_word_being_typed(prefix: str, healed: str) -> None:
    assert healed_text(prefix) == healed


def test_what_is_shown_comes_after_the_healed_text() -> None:
    assert after_healed("    return x", "    ") == "return x"
    assert after_healed("        pass", "    ") == "    pass"
    assert after_healed(" import sys", " im") == "port sys"
    # The model wrote something else (only possible when it stopped early): nothing to show.
    assert after_healed("  return x", "    ") == ""
    assert after_healed("x = 1", "") == "x = 1"


def test_the_trainer_recovers_the_healed_text_from_completion_and_shown() -> None:
    assert healed_of("    return x", "return x") == "    "
    assert healed_of(" import sys", "port sys") == " im"
    assert healed_of("x = 1", "x = 1") == ""


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_allowed_tokens_are_exactly_those_that_keep_to_the_healed_text(tokenizer: Any) -> None:
    texts = TokenTexts(tokenizer, tokenizer.eos_token_id)
    for remaining in (" im", "    re", "na", "    "):
        allowed = set(texts.allowed(remaining, may_end=True).tolist())
        expected = {
            i
            for i in range(len(tokenizer))
            if (t := tokenizer.decode([i])) and (t.startswith(remaining) or remaining.startswith(t))
        } | {tokenizer.eos_token_id}
        assert allowed == expected
        assert len(allowed) > 1, remaining
        # Past the first token the text may not end halfway.
        assert set(texts.allowed(remaining, may_end=False).tolist()) == expected - {tokenizer.eos_token_id}


def test_token_texts_keep_the_leading_space_that_sentencepiece_drops_alone() -> None:
    # A Llama-style tokenizer: "▁" marks a word's leading space, and decoding one token alone
    # drops it; healing " im" needs the space to be part of "▁import"'s text.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    corpus = ["import os\nimport sys\nfrom os import path\n"] * 50
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    import_id = tokenizer.convert_tokens_to_ids("▁import")
    assert tokenizer.decode([import_id]) == "import"  # alone, the space is gone

    texts = TokenTexts(tokenizer, tokenizer.eos_token_id)
    assert texts.text(import_id) == " import"
    assert texts.text(tokenizer.eos_token_id) == ""
    assert import_id in texts.allowed(" im", may_end=False).tolist()
