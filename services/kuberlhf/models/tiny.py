"""Tiny, locally built causal language models for tests and examples.

Nothing here downloads anything: the tokenizer is a character-level WordLevel tokenizer built with the
``tokenizers`` library from a given alphabet, and the model is a randomly initialised, very small
``LlamaForCausalLM``. Together with a small verifiable task (see :mod:`kuberlhf.tasks.addition`) they let
unit tests, integration tests and examples run real generation and real RL updates on a CPU in seconds.

The saved directories are ordinary Hugging Face model directories (safetensors weights, ``config.json``,
tokenizer files), so every engine and trainer that accepts a model path accepts them unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2, 3


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character of ``alphabet`` plus four special tokens.

    Ids 0..3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``; the alphabet's characters follow in order
    (duplicates ignored). No special tokens are added on encoding; padding is on the left (generation).
    Text over the alphabet round-trips: ``decode(encode(text)) == text``.
    """
    if not alphabet:
        raise ValueError("alphabet must not be empty")
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in alphabet:
        if ch not in vocab:
            vocab[ch] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Every character is its own pre-token (whitespace included), and decoding concatenates without spaces.
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_llama(
    tokenizer,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,  # head_dim 32: the smallest vLLM's CPU attention supports
    intermediate_size: int = 128,
    max_position_embeddings: int = 64,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised float32 ``LlamaForCausalLM`` sized for ``tokenizer`` (deterministic in ``seed``)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(torch.float32)
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    return model


def save_model_dir(model, tokenizer, path: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` to ``path``, a directory that
    ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
