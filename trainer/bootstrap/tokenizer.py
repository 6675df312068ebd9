"""The bootstrap's tokenizer: byte-level BPE learned from the training files only."""

from __future__ import annotations

from typing import Any

from core.prompts import FLYWHEEL_SPECIAL_TOKENS

EOS, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, PAD = FLYWHEEL_SPECIAL_TOKENS


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Byte-level BPE with the flywheel special tokens as ids 0..4 and no begin-of-sequence token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=FLYWHEEL_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE],
    )
