"""Tokenizers: transformers' AutoTokenizer from the checkpoint directory, and prompt rendering."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from grpo_jax.errors import ConfigError, InputNotFoundError
from grpo_jax.models.gguf_io import find_gguf_file, gguf_tokenizer

_GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
_VOCAB_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))


def _saved_class(path: str | os.PathLike) -> str | None:
    config = os.path.join(os.fspath(path), "tokenizer_config.json")
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("tokenizer_class")


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The checkpoint's own tokenizer (local files only; nothing is downloaded), padding on the left.

    ``path`` is a Hugging Face checkpoint directory, or a GGUF file (or a directory holding one), whose
    metadata describes its tokenizer and chat template. Left padding is what batched generation needs:
    every prompt ends at the same column, so the first generated token of every row is predicted from the
    last column.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    gguf_file = find_gguf_file(path)
    if gguf_file is not None:
        return _padded_left(gguf_tokenizer(gguf_file), gguf_file)
    # A tokenizer saved as the generic backend (tokenizer_class "TokenizersBackend", e.g. our character
    # tokenizer) must be loaded as such: AutoTokenizer would pick the class of config.json's model_type
    # (Qwen2Tokenizer for a qwen2 model), whose own pre-tokenizer replaces tokenizer.json's.
    loader = PreTrainedTokenizerFast if _saved_class(path) in _GENERIC_CLASSES else AutoTokenizer
    # transformers 5 builds an empty default tokenizer from config.json's model_type (qwen2, qwen3) when the
    # directory has no vocabulary at all: every prompt would encode to nothing
    if not any(all(os.path.isfile(os.path.join(os.fspath(path), name)) for name in names) for names in _VOCAB_FILES):
        raise InputNotFoundError(
            f"no tokenizer vocabulary in {os.fspath(path)!r}: expected one of "
            f"{', '.join(' + '.join(names) for names in _VOCAB_FILES)}")
    try:
        tokenizer = loader.from_pretrained(os.fspath(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise InputNotFoundError(f"no usable tokenizer files in {os.fspath(path)!r}: {e}") from e
    return _padded_left(tokenizer, os.fspath(path))


def _padded_left(tokenizer: Any, where: str) -> Any:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer in {where!r} has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_prompt(tokenizer: Any, prompt: str | list[dict[str, str]], *, chat_template: bool,
                  system: str | None = None) -> str:
    """The text the model sees for a task's prompt.

    ``prompt`` is a string or a list of chat messages ({"role", "content"}, as grpo_jax.data yields).
    With ``chat_template`` the messages (a string becomes one user turn; ``system`` goes first if given,
    replacing a system message the prompt starts with: two system turns are an error in some templates)
    are rendered by the tokenizer's template followed by the assistant's generation prompt. Without it a
    string is returned as is, and chat messages are an error (they need a template).
    """
    if not chat_template:
        if not isinstance(prompt, str):
            raise ConfigError("chat-message prompts need the chat template (chat_template=True)")
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the recipe asks for the chat template but this tokenizer has none")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        if messages and messages[0].get("role") == "system":
            messages = messages[1:]
        messages = [{"role": "system", "content": system}] + messages
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def token_end(tokenizer: Any, tokens: Sequence[int], char_end: int, *, skip_special_tokens: bool = True) -> int:
    """Index of the token whose decoded prefix first reaches ``char_end`` characters (clipped to the last
    token): where a span that ends at that character offset of the decoded text ends (a step of a completion,
    a tool call). Decoded as ``tokenizer.decode(..., skip_special_tokens=skip_special_tokens)``."""
    lo, hi = 0, len(tokens) - 1
    while lo < hi:  # the decoded length of a prefix grows with the prefix: binary search
        mid = (lo + hi) // 2
        if len(tokenizer.decode(list(tokens[:mid + 1]), skip_special_tokens=skip_special_tokens)) >= char_end:
            hi = mid
        else:
            lo = mid + 1
    return lo
