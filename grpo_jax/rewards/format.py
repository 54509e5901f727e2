"""Format rewards: DeepSeek-R1's <think>/<answer> layout, and DAPO's soft overlong penalty.

    format_reward(completions, strict=True)                          -> [N] floats in {0.0, 1.0}
    overlong_penalty(completion_lengths, max_length, cache_length)   -> [N] floats in [-1.0, 0.0]
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# the answer block must hold something: an empty <answer></answer> would be free reward
_STRICT = re.compile(r"\A\s*<think>.*?</think>\s*<answer>(?=.*?\S.*?</answer>).*?</answer>\s*\Z", re.DOTALL)


def _tags_in_order(completion: str) -> bool:
    """Some ``<think>``, then a ``</think>``, then an ``<answer>``, then an ``</answer>``, each after the one
    before: taking the first of each is always best, so one pass of ``str.find`` (the regex
    ``<think>.*?</think>.*?<answer>.*?</answer>`` took cubic time on hundreds of repeated tag pairs)."""
    at = 0
    for tag in _TAGS:
        at = completion.find(tag, at)
        if at < 0:
            return False
        at += len(tag)
    return True


def _is_formatted(completion: str, strict: bool) -> bool:
    if not strict:
        return _tags_in_order(completion)
    return all(completion.count(tag) == 1 for tag in _TAGS) and _STRICT.match(completion) is not None


def format_reward(completions: Sequence[str], *, strict: bool = True, **kwargs: Any) -> list[float]:
    """1.0 for each completion laid out as DeepSeek-R1 asks, else 0.0 (TRL reward signature).

    Args:
      completions: N str.
      strict: bool. True: the whole completion, apart from surrounding whitespace, is ``<think>...</think>``
        then ``<answer>...</answer>`` (only whitespace between them), each of the four tags exactly once;
        newlines are allowed inside both blocks. False: somewhere a ``<think>...</think>`` block is followed,
        later, by an ``<answer>...</answer>`` block; other text and repeated tags are allowed.
      **kwargs: dataset columns and trainer arguments, ignored.
    Returns:
      list of N floats in {0.0, 1.0}.
    Raises:
      TypeError: a completion is not a str.
    """
    del kwargs
    if isinstance(completions, str):
        raise TypeError("format_reward: `completions` must be a list of str, got one str")
    rewards = []
    for i, completion in enumerate(completions):
        if not isinstance(completion, str):
            raise TypeError(f"format_reward: completion {i} must be a str, got {type(completion).__name__}")
        rewards.append(1.0 if _is_formatted(completion, bool(strict)) else 0.0)
    return rewards


def _positive_int(name: str, value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"overlong_penalty: `{name}` must be an int, got {value!r}") from None
    if value <= 0:
        raise ValueError(f"overlong_penalty: `{name}` must be > 0, got {value}")
    return value


def overlong_penalty(completion_lengths: Sequence[int], *, max_length: int, cache_length: int) -> list[float]:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), one value per completion.

    With L the completion's length in tokens and L_max, L_cache = max_length, cache_length:
        0                                   if L <= L_max - L_cache
        ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max   (falls linearly from 0 to -1)
        -1                                  if L > L_max
    It is added to the task reward. DAPO uses L_max = 20480, L_cache = 4096.

    Args:
      completion_lengths: N ints >= 0 (list or 1-D integer array), completion lengths in tokens.
      max_length: int > 0, L_max.
      cache_length: int in (0, max_length], L_cache, the length of the punishment interval.
    Returns:
      list of N floats in [-1.0, 0.0].
    Raises:
      TypeError / ValueError: a length is negative or not an integer, or the arguments are out of range.
    """
    max_length = _positive_int("max_length", max_length)
    cache_length = _positive_int("cache_length", cache_length)
    if cache_length > max_length:
        raise ValueError(
            f"overlong_penalty: `cache_length` must be in (0, max_length={max_length}], got {cache_length}"
        )
    lengths = np.asarray(completion_lengths)
    if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
        raise TypeError(
            "overlong_penalty: `completion_lengths` must be a 1-D sequence of ints, "
            f"got shape {lengths.shape} and dtype {lengths.dtype}"
        )
    if lengths.size and lengths.min() < 0:
        raise ValueError(f"overlong_penalty: `completion_lengths` must be >= 0, got {int(lengths.min())}")
    lengths = lengths.astype(np.float64)
    soft_start = max_length - cache_length
    penalty = np.where(
        lengths <= soft_start, 0.0, np.where(lengths <= max_length, (soft_start - lengths) / cache_length, -1.0)
    )
    return [float(p) for p in penalty]
