"""Score a batch of completions with several weighted reward functions, isolating the ones that fail.

    specs = [RewardSpec(math_reward), RewardSpec(format_reward, weight=0.5)]
    total_N, per_reward, failures = score(specs, completions, {"answer": answers})

Each reward function follows TRL's convention, ``fn(completions, **example_fields) -> list[float]``. A function
that raises on the batch is called again on each completion alone, so one bad completion costs only its own
reward: it gets the spec's ``default`` and a ``RewardFailure`` naming it. Returning the wrong number of values,
a value that is not a real number, or a non-finite one is a failure too. ``None`` means "this reward does not
apply to this completion" (TRL's convention for multi-task datasets): it gets ``default`` and is not a failure.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

COMPLETION_CHARS = 500  # how much of a failing completion a RewardFailure keeps
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One reward function in a weighted sum.

    Attributes:
      fn: callable ``fn(completions: list[str], **example_fields) -> list[float]``.
      weight: float, finite; the reward's coefficient in the total.
      name: str, the key of its per-reward array and in failures; default ``fn.__name__`` (a
        ``functools.partial`` gives its function's name). Names must be unique within one ``score`` call.
      default: float, finite; the value given to a completion whose reward fails or is None.
    """

    fn: Callable[..., Sequence[float | None]]
    weight: float = 1.0
    name: str | None = None
    default: float = 0.0

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"RewardSpec: `fn` must be callable, got {type(self.fn).__name__}")
        for field in ("weight", "default"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"RewardSpec: `{field}` must be a finite number, got {value!r}")
            object.__setattr__(self, field, float(value))
        name = self.name
        if name is None:
            name = getattr(self.fn, "__name__", None) or getattr(getattr(self.fn, "func", None), "__name__", None)
            if name is None:
                raise ValueError(f"RewardSpec: `fn` {self.fn!r} has no __name__; pass `name`")
        if not isinstance(name, str) or not name:
            raise ValueError(f"RewardSpec: `name` must be a non-empty str, got {name!r}")
        object.__setattr__(self, "name", name)


@dataclasses.dataclass(frozen=True)
class RewardFailure:
    """A reward that could not be computed for one completion.

    Attributes:
      name: str, the RewardSpec's name.
      index: int, the completion's position in the batch.
      error: str, repr of the exception (or of a ValueError describing a bad return value).
      completion: str, the completion's text, cut to its first COMPLETION_CHARS characters.
    """

    name: str
    index: int
    error: str
    completion: str


class InvalidRewardValue(ValueError):
    """A reward function's return value is not one finite real number (or None) per completion."""


def _values(name: str, result: Any, n: int) -> list[float | None]:
    """``result`` as n values (None or float), or raise InvalidRewardValue saying what was wrong with it."""
    if isinstance(result, (str, bytes, Mapping)) or not hasattr(result, "__len__"):
        raise InvalidRewardValue(f"reward {name!r} returned a {type(result).__name__}; expected a list of {n} floats")
    if len(result) != n:
        raise InvalidRewardValue(
            f"reward {name!r} returned {len(result)} values for {n} completion{'s' * (n != 1)}; "
            "expected one per completion"
        )
    values: list[float | None] = []
    for value in result:
        if value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = InvalidRewardValue(f"reward {name!r} returned {value!r}; expected a real number or None")
        values.append(value)
    return values


def _call(spec: RewardSpec, completions: list[str], fields: dict[str, list]) -> list[Any]:
    return _values(spec.name, spec.fn(completions, **fields), len(completions))


def _per_completion(spec: RewardSpec, completions: list[str], fields: dict[str, list]) -> list[Any]:
    """Call ``spec.fn`` on each completion alone; a failing call yields its exception in that slot."""
    out: list[Any] = []
    for i, completion in enumerate(completions):
        try:
            out.append(_call(spec, [completion], {k: [v[i]] for k, v in fields.items()})[0])
        except Exception as e:  # noqa: BLE001 - any error in user code is this completion's failure
            out.append(e)
    return out


def score(
    specs: Sequence[RewardSpec], completions: Sequence[str], example_fields: Mapping[str, Sequence[Any]]
) -> tuple[np.ndarray, dict[str, np.ndarray], list[RewardFailure]]:
    """The weighted total reward of each completion, each reward's values, and the failures.

    Args:
      specs: RewardSpecs with unique names, at least one.
      completions: N str.
      example_fields: {column: N values}, passed to every reward function as keyword arguments (e.g.
        ``{"answer": [...]}`` with completion i's reference at position i).
    Returns:
      total_N: float32 [N], sum over specs of weight * value (the value is ``default`` where it failed).
      per_reward: {name: float32 [N]}, each reward's unweighted values (``default`` where it failed).
      failures: list of RewardFailure, ordered by spec, then completion.
    Raises:
      ValueError: ``specs`` is empty or has duplicate names, or an example field does not have N values.
      TypeError: a spec is not a RewardSpec, or a completion is not a str.
    """
    specs = list(specs)
    if not specs:
        raise ValueError("score: `specs` must contain at least one RewardSpec, got none")
    for spec in specs:
        if not isinstance(spec, RewardSpec):
            raise TypeError(f"score: `specs` must contain RewardSpecs, got {type(spec).__name__}")
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"score: reward names must be unique, got {', '.join(map(repr, duplicates))} twice or more")
    completions = list(completions)
    n = len(completions)
    for i, completion in enumerate(completions):
        if not isinstance(completion, str):
            raise TypeError(f"score: completion {i} must be a str, got {type(completion).__name__}")
    fields: dict[str, list] = {}
    for key, column in example_fields.items():
        is_column = hasattr(column, "__len__") and not isinstance(column, (str, bytes))
        if not is_column or len(column) != n:
            got = f"{len(column)} values" if is_column else f"a {type(column).__name__}"
            raise ValueError(f"score: example field {key!r} must have one value per completion ({n}), got {got}")
        fields[key] = list(column)

    total = np.zeros(n, np.float64)
    per_reward: dict[str, np.ndarray] = {}
    failures: list[RewardFailure] = []
    for spec in specs:
        try:
            values = _call(spec, completions, fields)
        except Exception as batch_error:  # noqa: BLE001 - retried per completion to find which ones fail
            values = [batch_error] if n == 1 else _per_completion(spec, completions, fields)
        column = np.full(n, spec.default, np.float64)
        for i, value in enumerate(values):
            if value is not None and not isinstance(value, BaseException) and not FLOAT32_MAX >= abs(value):
                value = InvalidRewardValue(
                    f"reward {spec.name!r} returned {value!r}; expected a finite number (within float32 range)"
                )
            if isinstance(value, BaseException):
                failure = RewardFailure(spec.name, i, repr(value), completions[i][:COMPLETION_CHARS])
                failures.append(failure)
                logger.warning(
                    "reward %r failed on completion %d (using default %s): %s; completion starts %.200r",
                    spec.name, i, spec.default, failure.error, failure.completion,
                )
            elif value is not None:
                column[i] = value
        per_reward[spec.name] = column.astype(np.float32)
        total += spec.weight * column
    overflow = ~(np.abs(total) <= FLOAT32_MAX)
    if overflow.any():
        raise ValueError(
            f"score: the weighted total overflows float32 at completion(s) {np.flatnonzero(overflow)[:5].tolist()}; "
            "check the weights and rewards"
        )
    return total.astype(np.float32), per_reward, failures
