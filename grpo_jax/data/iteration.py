"""Deterministic, resumable iteration over a finite task, and train/eval splits.

``PromptStream`` walks a finite ``Sequence`` of examples epoch by epoch in a seeded order
(epoch ``e``'s order is a pure function of ``(seed, e)``) and hands out batches of ``batch_size``.
Its whole position is ``state()`` = ``{"seed", "epoch", "position", ...}`` (small, JSON-able), so a
checkpoint saves it and ``restore(state)`` continues with exactly the same sequence of batches, mid-epoch
or across an epoch boundary. Batches continue across epoch boundaries (no short batch until the last
epoch when ``num_epochs`` is set).

Prompts longer than ``max_prompt_length`` (measured by ``length_fn``, e.g. a tokenizer's token count on
the rendered prompt; default: characters) follow an explicit policy, and every occurrence is counted
(``stats``) and logged:

* ``"drop"``: skip the example (the batch is filled from the following ones);
* ``"truncate"``: cut the prompt (``truncate_fn``, or by default the longest prefix of the text, or of the
  last chat message's content, that fits);
* ``"error"``: raise ``ValueError`` naming the example.

``split_train_eval`` separates eval examples from training ones by a hash of a per-example key (stable
when the file is reordered or grows) or by an exact seeded fraction.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from grpo_jax.data.example import Example, Prompt, prompt_text
from grpo_jax.errors import ConfigError

logger = logging.getLogger(__name__)

OVERLONG_POLICIES = ("drop", "truncate", "error")
SPLIT_METHODS = ("hash", "exact")


# --------------------------------------------------------------------------------------------- splits

class Subset(Sequence):
    """A view of ``source`` restricted to ``indices`` (in that order)."""

    def __init__(self, source: Sequence[Example], indices: Sequence[int]):
        self.source = source
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.source[j] for j in self.indices[i]]
        return self.source[self.indices[i]]

    def __repr__(self) -> str:
        return f"Subset({len(self)} of {len(self.source)})"


def _key_of(example: Example, key: str | Callable[[Example], Any] | None) -> str:
    if key is None:
        return prompt_text(example["prompt"])
    if callable(key):
        return str(key(example))
    if key not in example:
        raise KeyError(f"split_train_eval: `key`={key!r} is not a field of the example; fields {sorted(example)}")
    return str(example[key])


def hash_unit(text: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) that depends only on ``(seed, text)``: stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_train_eval(
    source: Sequence[Example],
    *,
    eval_fraction: float,
    seed: int = 0,
    method: str = "hash",
    key: str | Callable[[Example], Any] | None = None,
) -> tuple[Subset, Subset]:
    """Split ``source`` into disjoint ``(train, eval)`` subsets covering it.

    Args:
      eval_fraction: in [0, 1).
      method: ``"hash"``: an example is in eval iff ``hash_unit(key, seed) < eval_fraction`` (about that
        fraction; membership is a property of the example, so it is stable when the data is reordered or
        grows, and identical prompts always land on the same side). ``"exact"``: exactly
        ``round(eval_fraction * len(source))`` examples, chosen by a seeded permutation of the indices;
        it splits rows, so a prompt that occurs several times can land on both sides (use "hash" when
        the source has duplicates, e.g. small procedural tasks).
      key: what identifies an example for ``"hash"``: a field name (e.g. ``"task_id"``), a callable, or
        None for the prompt text.
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"split_train_eval: unknown method={method!r}; expected one of {SPLIT_METHODS}")
    if not isinstance(eval_fraction, (int, float)) or not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"split_train_eval: `eval_fraction` must be in [0, 1), got {eval_fraction!r}")
    n = len(source)
    if method == "hash":
        is_eval = [hash_unit(_key_of(source[i], key), seed) < eval_fraction for i in range(n)]
    else:
        chosen = set(np.random.default_rng([seed, 0x5E1]).permutation(n)[: round(eval_fraction * n)].tolist())
        is_eval = [i in chosen for i in range(n)]
    train = [i for i in range(n) if not is_eval[i]]
    evals = [i for i in range(n) if is_eval[i]]
    return Subset(source, train), Subset(source, evals)


# -------------------------------------------------------------------------------------------- lengths

def _default_length(prompt: Prompt) -> int:
    return len(prompt_text(prompt))


def _longest_fitting(text: str, fits: Callable[[str], bool], side: str) -> str | None:
    """Longest prefix (side="right": cut from the right) or suffix (side="left") of text that fits."""
    cut = (lambda k: text[:k]) if side == "right" else (lambda k: text[len(text) - k:])
    if not fits(cut(0)):
        return None
    lo, hi = 0, len(text)  # invariant: cut(lo) fits; binary search assumes length is monotone in k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(cut(mid)):
            lo = mid
        else:
            hi = mid - 1
    return cut(lo)


# --------------------------------------------------------------------------------------------- stream

def _copy(example: Example) -> Example:
    """A copy the caller may modify: a new dict, and new message dicts for a chat prompt."""
    out = dict(example)
    if isinstance(out.get("prompt"), list):
        out["prompt"] = [dict(m) for m in out["prompt"]]
    return out


class PromptStream:
    """Seeded, resumable batches over a finite task. See the module docstring.

    Args:
      source: a finite ``Sequence`` of examples (a list, ``ArithmeticTask``, ``Subset``...).
      batch_size: examples per batch (B).
      seed: the order of epoch ``e`` is ``np.random.default_rng([seed, e]).permutation(len(source))``.
      shuffle: False keeps the source order every epoch.
      num_epochs: None iterates forever; otherwise iteration stops after that many epochs (the final batch
        may be short unless ``drop_last``).
      max_prompt_length: None disables the length check.
      length_fn: prompt (str or chat messages) → length; default: characters of the text.
      overlong: ``"drop"`` | ``"truncate"`` | ``"error"``.
      truncate_fn: ``(prompt, max_prompt_length) → prompt`` for ``"truncate"``; default: the longest
        part of the text (for chat prompts: of the last message's content) that fits, keeping the start
        (``truncate_side="right"``) or the end (``"left"``). The result is re-measured.
    """

    def __init__(
        self,
        source: Sequence[Example],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        drop_last: bool = False,
        max_prompt_length: int | None = None,
        length_fn: Callable[[Prompt], int] | None = None,
        overlong: str = "drop",
        truncate_fn: Callable[[Prompt, int], Prompt] | None = None,
        truncate_side: str = "right",
    ):
        name = "PromptStream"
        if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
            raise TypeError(f"{name}: `source` must be a finite Sequence of examples, got {type(source).__name__}")
        if len(source) == 0:
            raise ValueError(f"{name}: `source` is empty")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{name}: `batch_size` must be an int >= 1, got {batch_size!r}")
        if not isinstance(seed, int):
            raise TypeError(f"{name}: `seed` must be an int, got {seed!r}")
        if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
            raise ValueError(f"{name}: `num_epochs` must be None or an int >= 1, got {num_epochs!r}")
        if max_prompt_length is not None and (not isinstance(max_prompt_length, int) or max_prompt_length < 1):
            raise ValueError(f"{name}: `max_prompt_length` must be None or an int >= 1, got {max_prompt_length!r}")
        if overlong not in OVERLONG_POLICIES:
            raise ValueError(f"{name}: unknown overlong={overlong!r}; expected one of {OVERLONG_POLICIES}")
        if truncate_side not in ("right", "left"):
            raise ValueError(f"{name}: unknown truncate_side={truncate_side!r}; expected 'right' or 'left'")
        self.source = source
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.drop_last = drop_last
        self.max_prompt_length = max_prompt_length
        self.length_fn = length_fn or _default_length
        self.overlong = overlong
        self.truncate_fn = truncate_fn
        self.truncate_side = truncate_side
        self._n = len(source)
        self._seed = seed
        self._epoch = 0
        self._position = 0
        self._dropped = 0
        self._truncated = 0
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None
        self._lengths: dict[int, int] = {}
        self._logged: set[int] = set()

    # -- state ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, int]:
        """The stream's position: a small JSON-able dict for a checkpoint."""
        return {
            "seed": self._seed,
            "epoch": self._epoch,
            "position": self._position,
            "num_examples": self._n,
            "dropped": self._dropped,
            "truncated": self._truncated,
            "shuffle": bool(self.shuffle),
            "batch_size": self.batch_size,
            "max_prompt_length": self.max_prompt_length,
            "overlong": self.overlong,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from ``state()``, possibly of another process): the next batches are
        exactly those the saved stream would have produced."""
        name = "PromptStream.restore"
        if not isinstance(state, dict):
            raise TypeError(f"{name}: `state` must be a dict from PromptStream.state(), got {type(state).__name__}")
        missing = [k for k in ("seed", "epoch", "position") if k not in state]
        if missing:
            raise ValueError(f"{name}: `state` lacks {missing}; got keys {sorted(state)}")
        if state.get("num_examples", self._n) != self._n:
            raise ValueError(
                f"{name}: the state was saved for a source of {state['num_examples']} examples but this source "
                f"has {self._n}; the data changed, so the sequence cannot be resumed exactly"
            )
        settings = {"shuffle": bool(self.shuffle), "batch_size": self.batch_size,
                     "max_prompt_length": self.max_prompt_length, "overlong": self.overlong}
        changed = {k: (state[k], v) for k, v in settings.items() if k in state and state[k] != v}
        if changed:
            raise ValueError(
                f"{name}: the stream was saved with other settings (saved, now): {changed}; the sequence "
                "would differ, so it cannot be resumed exactly"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self._n:
            raise ValueError(f"{name}: invalid epoch={epoch} / position={position} for {self._n} examples")
        self._seed = int(state["seed"])
        self._epoch, self._position = epoch, position
        self._dropped = int(state.get("dropped", 0))
        self._truncated = int(state.get("truncated", 0))
        self._order_epoch = None

    @property
    def stats(self) -> dict[str, int]:
        """How many prompts were dropped / truncated for length so far (each occurrence counts)."""
        return {"dropped": self._dropped, "truncated": self._truncated}

    @property
    def epoch(self) -> int:
        return self._epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Source indices in the order of epoch ``epoch``: a pure function of ``(seed, epoch)``."""
        if not self.shuffle:
            return np.arange(self._n)
        return np.random.default_rng([self._seed, epoch]).permutation(self._n)

    # -- length policy -------------------------------------------------------------------------------
    def _length(self, index: int, prompt: Prompt) -> int:
        if index not in self._lengths:
            length = self.length_fn(prompt)
            if not isinstance(length, (int, np.integer)):
                raise TypeError(f"PromptStream: `length_fn` must return an int, got {length!r}")
            self._lengths[index] = int(length)
        return self._lengths[index]

    def _truncate(self, prompt: Prompt) -> Prompt | None:
        limit = self.max_prompt_length
        if self.truncate_fn is not None:
            return self.truncate_fn(prompt, limit)
        if isinstance(prompt, str):
            return _longest_fitting(prompt, lambda t: self.length_fn(t) <= limit, self.truncate_side)
        head, last = list(prompt[:-1]), prompt[-1]

        def fits(content: str) -> bool:
            return self.length_fn(head + [{**last, "content": content}]) <= limit

        content = _longest_fitting(last["content"], fits, self.truncate_side)
        return None if content is None else head + [{**last, "content": content}]

    def _admit(self, index: int, example: Example) -> Example | None:
        """The example to emit, after the length policy; None if dropped."""
        if self.max_prompt_length is None:
            return _copy(example)
        prompt = example["prompt"]
        length = self._length(index, prompt)
        limit = self.max_prompt_length
        if length <= limit:
            return _copy(example)
        log = logger.warning if index not in self._logged else logger.debug
        self._logged.add(index)
        if self.overlong == "error":
            raise ConfigError(
                f"PromptStream: prompt of source example {index} has length {length} > max_prompt_length={limit} "
                f"(overlong='error'): {prompt_text(prompt)[:80]!r}..."
            )
        if self.overlong == "drop":
            self._dropped += 1
            log("PromptStream: dropped source example %d: prompt length %d > max_prompt_length %d (%d dropped so far)",
                index, length, limit, self._dropped)
            return None
        truncated = self._truncate(prompt)
        if truncated is None or self.length_fn(truncated) > limit:
            raise ConfigError(
                f"PromptStream: cannot truncate the prompt of source example {index} (length {length}) to "
                f"max_prompt_length={limit}; pass a `truncate_fn` or use overlong='drop'"
            )
        self._truncated += 1
        log("PromptStream: truncated source example %d: prompt length %d > max_prompt_length %d (%d truncated so far)",
            index, length, limit, self._truncated)
        return {**_copy(example), "prompt": truncated}

    # -- iteration -----------------------------------------------------------------------------------
    def _finished(self) -> bool:
        return self.num_epochs is not None and self._epoch >= self.num_epochs

    def next_batch(self) -> list[Example]:
        """The next ``batch_size`` examples (fresh dict copies). Raises StopIteration after the last epoch."""
        batch: list[Example] = []
        skipped_in_a_row = 0
        saved = self.state()
        try:
            self._fill(batch, skipped_in_a_row)
        except ValueError:
            self.restore(saved)  # an error consumes nothing: the caller may fix the cause and go on
            raise
        if not batch or (self.drop_last and len(batch) < self.batch_size):
            raise StopIteration
        return batch

    def _fill(self, batch: list[Example], skipped_in_a_row: int) -> None:
        while len(batch) < self.batch_size:
            if self._position >= self._n:
                self._epoch += 1
                self._position = 0
            if self._finished():
                break
            if self._order_epoch != self._epoch:
                self._order, self._order_epoch = self.epoch_order(self._epoch), self._epoch
            index = int(self._order[self._position])
            self._position += 1
            example = self._admit(index, self.source[index])
            if example is None:
                skipped_in_a_row += 1
                if skipped_in_a_row > self._n:
                    raise ConfigError(
                        f"PromptStream: every one of the {self._n} examples has a prompt longer than "
                        f"max_prompt_length={self.max_prompt_length}; nothing to iterate"
                    )
                continue
            skipped_in_a_row = 0
            batch.append(example)

    def __iter__(self) -> Iterator[list[Example]]:
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    def __repr__(self) -> str:
        return f"PromptStream({len(self.source)} examples, batch_size={self.batch_size}, state={self.state()})"
