"""Shared builders for the trainer tests: a tiny real Llama, a locally trained tokenizer, and
sampling exactly as the backend serves (generate with top_k=0, top_p=1, raw logits / T)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as tk_decoders
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from core.wire import Episode

EOS = "<|endoftext|>"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models on a shared machine: thread hand-offs cost more than the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS, "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token="<pad>")


def tiny_llama(vocab_size: int, eos_id: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=eos_id,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
        # Wider than the default 0.02 so the untrained model is far from uniform, as real ones are.
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_model(path: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tokenizer = build_tokenizer()
    model = tiny_llama(len(tokenizer), tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompt_ids: list[int],
    temperature: float,
    eos_id: int,
    max_new_tokens: int = 4,
    n: int = 1,
) -> list[tuple[list[int], list[float]]]:
    """`n` completions and their log-probs, computed the way backend/serving.py records them."""
    generation = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        output_logits=True,
        return_dict_in_generate=True,
        max_new_tokens=max_new_tokens,
    )
    input_ids = torch.tensor([prompt_ids] * n)
    out = model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=generation
    )
    samples = []
    for row in range(n):
        completion = out.sequences[row, len(prompt_ids) :].tolist()
        # Rows that stopped early are padded with eos: keep up to and including the first one.
        if eos_id in completion:
            completion = completion[: completion.index(eos_id) + 1]
        logprobs = [
            float(torch.log_softmax(out.logits[step][row].float() / temperature, dim=-1)[token])
            for step, token in enumerate(completion)
        ]
        samples.append((completion, logprobs))
    return samples


def episode(
    seq: int,
    prompt_ids: list[int],
    completion_ids: list[int],
    token_logprobs: list[float],
    reward: float,
    temperature: float = 1.0,
    model_version: str = "base",
    user_id: str = "u1",
) -> Episode:
    return Episode(
        seq=seq,
        completion_id=f"c{seq}",
        user_id=user_id,
        model_version=model_version,
        prompt_ids=prompt_ids,
        completion_ids=completion_ids,
        token_logprobs=token_logprobs,
        temperature=temperature,
        text="",
        outcome="accepted" if reward > 0 else "rejected",
        reward=reward,
        created_at=0.0,
        finalized_at=0.0,
    )


def prompts(tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    return [tokenizer.encode(text, add_special_tokens=False) for text in CORPUS]


def shown(
    tokenizer, seq: int, text: str, logprobs_of_words: list[float], outcome: str, reward: float, rewrite=None
) -> Episode:
    """An episode that showed `text`, one log-prob per whitespace-separated word spread over its tokens."""
    ids, logprobs = [], []
    for i, word in enumerate(text.split(" ")):
        piece = tokenizer.encode(word if i == 0 else " " + word, add_special_tokens=False)
        ids += piece
        logprobs += [logprobs_of_words[i]] * len(piece)
    return Episode(
        seq=seq,
        completion_id=f"c{seq}",
        user_id="u",
        model_version="base",
        prompt_ids=tokenizer.encode("x = ", add_special_tokens=False),
        completion_ids=ids,
        token_logprobs=logprobs,
        temperature=0.7,
        text=text,
        outcome=outcome,
        reward=reward,
        created_at=0.0,
        finalized_at=0.0,
        rewrite=rewrite,
    )
