"""An Example is a plain dict: ``{"prompt": str | list[chat message], <reference fields>...}``.

The prompt is either a string or a list of chat messages ``{"role": str, "content": str}`` (rendered
later with the tokenizer's chat template when a recipe asks). Every other key is a reference field that
reward functions receive as keyword arguments, e.g.

* math tasks: ``"answer"`` / ``"final_answer"`` (the reference the completion's final answer must equal);
* code tasks: ``"tests"`` (a HumanEval-style check program), ``"entry_point"``, ``"test_setup"``.

Examples are plain dicts so they pass through JSON, multiprocessing and user code without adapters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Message = dict[str, str]
Prompt = str | list[Message]
Example = dict[str, Any]

CHAT_ROLES = ("system", "user", "assistant", "tool")


def validate_prompt(prompt: Any, *, where: str = "example") -> None:
    """Raise TypeError/ValueError unless ``prompt`` is a non-empty string or a non-empty list of chat messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: `prompt` is an empty string")
        return
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError(f"{where}: `prompt` is an empty list of chat messages")
        for j, message in enumerate(prompt):
            if not isinstance(message, Mapping):
                raise TypeError(
                    f"{where}: `prompt[{j}]` must be a chat message dict {{'role': ..., 'content': ...}}, "
                    f"got {type(message).__name__}"
                )
            missing = [k for k in ("role", "content") if k not in message]
            if missing:
                raise ValueError(f"{where}: `prompt[{j}]` lacks key(s) {missing}; got keys {sorted(message)}")
            if message["role"] not in CHAT_ROLES:
                raise ValueError(
                    f"{where}: `prompt[{j}]['role']` is {message['role']!r}; expected one of {CHAT_ROLES}"
                )
            if not isinstance(message["content"], str):
                raise TypeError(
                    f"{where}: `prompt[{j}]['content']` must be str, got {type(message['content']).__name__}"
                )
        return
    raise TypeError(
        f"{where}: `prompt` must be a str or a list of chat messages, got {type(prompt).__name__}"
    )


def validate_example(example: Any, *, required: Iterable[str] = (), where: str = "example") -> Example:
    """Check that ``example`` is a dict with a valid ``"prompt"`` and every key in ``required``.

    Returns the example unchanged so the call can be used inline. ``where`` names the example in errors
    (e.g. ``"gsm8k.jsonl line 12"``).
    """
    if not isinstance(example, dict):
        raise TypeError(f"{where}: an example must be a dict, got {type(example).__name__}")
    if "prompt" not in example:
        raise ValueError(f"{where}: missing key 'prompt'; got keys {sorted(example)}")
    validate_prompt(example["prompt"], where=where)
    missing = [k for k in required if k not in example]
    if missing:
        raise ValueError(f"{where}: missing reference field(s) {missing}; got keys {sorted(example)}")
    for key in example:
        if not isinstance(key, str):
            raise TypeError(f"{where}: example keys must be str, got {key!r}")
    return example


def prompt_text(prompt: Prompt) -> str:
    """The prompt as one string: itself, or the chat messages' contents joined by newlines.

    A cheap stand-in for the rendered prompt when only a rough length or a hash key is needed.
    """
    if isinstance(prompt, str):
        return prompt
    return "\n".join(message["content"] for message in prompt)


def user_prompt(text: str, *, system: str | None = None) -> list[Message]:
    """A chat prompt with one user message (and an optional system message before it)."""
    messages: list[Message] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": text})
    return messages
