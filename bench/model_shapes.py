"""`flywheel bench build-model`: a randomly initialised model of a real model's shape, built here.

A serving or training speed figure depends on a model's shape (layers, widths, heads, vocabulary),
not on its weights, so a model directory with Qwen2.5-Coder-0.5B's configuration and random
weights measures what the real one would cost, with nothing downloaded. Its tokenizer is a
byte-level BPE learned from local Python sources, with the family's special tokens (the FIM
tokens and <|endoftext|>), so core/prompts.py detects its FIM format as for the real model.
The directory loads in transformers (the in-process engine, the trainer) and in vLLM alike.
"""

from __future__ import annotations

import argparse
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Qwen2.5-Coder's special tokens that serving reads (core/prompts.py's "qwen" format), and the
# end of text it stops at; <|fim_pad|> pads, as no text ever contains it.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]


@dataclass(frozen=True)
class Shape:
    """A model family's configuration, written out (transformers' config.json keys)."""

    config: dict[str, Any]
    special_tokens: list[str]
    eos: str
    pad: str
    # The tokenizer's own vocabulary, learned here; the model's embedding keeps the family's
    # size (config["vocab_size"]), which is what its speed depends on.
    tokenizer_vocab: int = 32_000


# https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B/blob/main/config.json: 0.49B parameters (0.36B
# outside the tied embedding), 24 layers, grouped-query attention with 14 query and 2 key-value heads.
QWEN25_CODER_05B = Shape(
    config={
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
    },
    special_tokens=QWEN_SPECIAL_TOKENS,
    eos="<|endoftext|>",
    pad="<|fim_pad|>",
)

SHAPES: dict[str, Shape] = {"qwen2.5-coder-0.5b": QWEN25_CODER_05B}

# Local text the tokenizer learns from: the standard library's Python files, up to this much.
TOKENIZER_CHARS = 4_000_000


def _local_python(limit: int) -> list[str]:
    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        text = path.read_text(errors="replace")
        texts.append(text)
        total += len(text)
        if total >= limit:
            break
    return texts


def build_tokenizer(shape: Shape) -> Any:
    """Byte-level BPE learned from local Python files, with the shape's special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=shape.tokenizer_vocab,
        special_tokens=shape.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_local_python(TOKENIZER_CHARS), trainer)
    others = [t for t in shape.special_tokens if t not in (shape.eos, shape.pad)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=shape.eos, pad_token=shape.pad, extra_special_tokens=others
    )


def build_model(shape_name: str, out: Path, seed: int = 0, layers: int | None = None) -> Path:
    """Writes config, random weights (bfloat16, as the family ships them) and tokenizer to `out`.
    `layers`: fewer layers of the same widths, for a check that need not be fast figures."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    shape = SHAPES[shape_name]
    tokenizer = build_tokenizer(shape)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (shape.eos, shape.pad)}
    values = dict(shape.config)
    if layers is not None:
        values.update(num_hidden_layers=layers, max_window_layers=layers)
    config = AutoConfig.for_model(
        **values,
        bos_token_id=ids[shape.eos],
        eos_token_id=ids[shape.eos],
        pad_token_id=ids[shape.pad],
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[shape.eos], eos_token_id=ids[shape.eos], pad_token_id=ids[shape.pad]
    )
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="flywheel bench build-model",
        description="a randomly initialised model of a real model's shape, with a local tokenizer",
    )
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="qwen2.5-coder-0.5b", help="the real model to copy"
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--layers", type=int, help="fewer layers of the same widths (not for figures)")
    args = parser.parse_args(list(argv))
    if (args.out / "config.json").is_file():
        print(f"{args.out} already holds a model; nothing written")
        return 0
    build_model(args.shape, args.out, args.seed, args.layers)
    print(f"{args.shape}-shaped model (random weights) written to {args.out}")
    return 0
