"""`flywheel bench build-model`: a Qwen2.5-Coder-0.5B-shaped model built here, loadable, with the
family's FIM tokens that serving detects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.prompts import build_prompt_ids, detect_fim_format

# https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B/blob/main/config.json
QWEN25_CODER_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
}


def test_the_shape_is_qwen25_coder_05b() -> None:
    from bench.model_shapes import SHAPES

    config = SHAPES["qwen2.5-coder-0.5b"].config
    assert {key: config[key] for key in QWEN25_CODER_05B} == QWEN25_CODER_05B
    assert config["rope_theta"] == 1e6


def test_build_model_writes_a_loadable_model_with_qwen_fim(tmp_path: Path) -> None:
    out = tmp_path / "model"
    # One layer of the real widths: the same path as the full model, a fraction of its time.
    command = [sys.executable, "-m", "flywheel.cli", "bench", "build-model", "--out", str(out)]
    command += ["--layers", "1"]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    config = json.loads((out / "config.json").read_text())
    expected = dict(QWEN25_CODER_05B, num_hidden_layers=1)
    assert {key: config[key] for key in expected} == expected

    tokenizer = AutoTokenizer.from_pretrained(out)
    fim = detect_fim_format(tokenizer)
    assert fim.name == "qwen"
    ids = build_prompt_ids(tokenizer, fim, "def add(a, b):\n    return", "\n\nprint(add(1, 2))\n", 64)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|fim_prefix|>" and tokens[-1] == "<|fim_middle|>" and "<|fim_suffix|>" in tokens
    assert tokenizer.eos_token == "<|endoftext|>"

    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) > 151936 * 896
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 151936)
    # Built again: the directory is kept, not overwritten.
    again = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    assert "already holds a model" in again.stdout
