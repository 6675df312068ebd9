"""The bootstrap's model: a small Llama that ends its completions with the flywheel end-of-text."""

from __future__ import annotations

from typing import Any

import torch

from core.prompts import FLYWHEEL_SPECIAL_TOKENS
from trainer.bootstrap.presets import Preset
from trainer.bootstrap.tokenizer import EOS, PAD


def make_model(preset: Preset, vocab_size: int, seed: int) -> Any:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos_id, pad_id = FLYWHEEL_SPECIAL_TOKENS.index(EOS), FLYWHEEL_SPECIAL_TOKENS.index(PAD)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=preset.hidden,
        intermediate_size=preset.ffn,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.heads,
        # Serving prompts (384 tokens + a completion) must fit even when a test model trains shorter.
        max_position_embeddings=max(preset.seq_len, 512),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id, max_new_tokens=48
    )
    return model
