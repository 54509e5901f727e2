"""reasoning-gym's procedural generators as a prompt source, scored by each dataset's own ``score_answer``.

    examples = load_reasoning_gym("chain_sum", size=1000, seed=0)       # list of Examples
    rewards = reasoning_gym_reward(completions, **columns)              # [N] floats in [0, 1]

reasoning-gym (``pip install reasoning-gym``, tested with 0.1.25) has about a hundred generators: arithmetic,
algebra, logic, puzzles, games, ARC... ``reasoning_gym.create_dataset(name, size=..., seed=..., **options)``
yields entries ``{"question", "answer", "metadata"}`` and the dataset's ``score_answer(answer, entry)`` grades
an answer in [0, 1]. It is optional: this module imports it only when one of its functions is called.

Each Example has these fields:
    "prompt"       chat messages (a system message with ``system_prompt``, then the question) or one str
    "question"     str, the generator's question
    "answer"       str, the oracle answer; None for datasets that grade any valid solution (e.g. rush_hour)
    "rg_dataset"   str, the dataset's name
    "rg_config"    str, JSON of the generator's arguments (size, seed and ``config``)
    "rg_metadata"  str, JSON of the entry's metadata
The reference fields are all str (``answer`` may be None), so examples pass through JSON, Arrow tables and
checkpoints unchanged.

The JSON is lossless for what generators put in metadata: tuples are written as ``{"__tuple__": [...]}`` and
dicts with non-str keys as ``{"__items__": [[key, value], ...]}``, so a scorer sees the very objects the
generator made (ARC's scorer compares tuples of tuples; plain JSON would turn them into lists and grade every
answer wrong).

``reasoning_gym_reward`` takes the answer inside the last ``<answer>...</answer>`` of each completion (with
reasoning-gym's own ``extract_answer``, as its evaluations do), rebuilds the dataset from ``rg_dataset`` and
``rg_config`` (cached per process; some scorers read the dataset's config) and calls its ``score_answer``.
grpo_jax's ``extract_answer`` is not used: it drops a trailing full stop, which is part of some answers
(sentence_reordering). Score examples with the reasoning-gym version that generated them.

To mix tasks, concatenate the lists of several ``load_reasoning_gym`` calls: each example names its own
dataset, so one batch may hold many. reasoning-gym's "composite" dataset is not supported (its config holds
DatasetSpec objects, which JSON cannot hold).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from grpo_jax.data.example import Example, user_prompt, validate_example
from grpo_jax.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "Think the problem through step by step inside <think> </think> tags, then give only the final answer "
    "inside <answer> </answer> tags:\n<think> reasoning here </think>\n<answer> answer here </answer>\n"
    "When the question shows the format of the answer, follow it exactly."
)
FIELDS = ("question", "answer", "rg_dataset", "rg_config", "rg_metadata")  # the reference fields of an Example

_TUPLE = "__tuple__"
_ITEMS = "__items__"


def _reasoning_gym(caller: str):
    """The reasoning_gym module, or an ImportError telling the user how to install it."""
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError(
            f"{caller} needs reasoning-gym, which grpo_jax does not install: pip install reasoning-gym"
        ) from e
    return reasoning_gym


def _tagged(value: Any, where: str) -> Any:
    """``value`` with tuples and non-str-keyed dicts tagged, so that json.dumps keeps them; TypeError otherwise."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} is not finite; JSON cannot hold it")
        return value
    if isinstance(value, tuple):
        return {_TUPLE: [_tagged(v, where) for v in value]}
    if isinstance(value, list):
        return [_tagged(v, where) for v in value]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and not {_TUPLE, _ITEMS} & set(value):
            return {k: _tagged(v, where) for k, v in value.items()}
        return {_ITEMS: [[_tagged(k, where), _tagged(v, where)] for k, v in value.items()]}
    raise TypeError(f"{where}: a {type(value).__name__} ({value!r:.80}) cannot be written as JSON")


def _untag(obj: dict) -> Any:
    if len(obj) == 1 and _TUPLE in obj:
        return tuple(obj[_TUPLE])
    if len(obj) == 1 and _ITEMS in obj:
        return dict(obj[_ITEMS])
    return obj


def to_json(value: Any, *, where: str = "to_json") -> str:
    """``value`` as a JSON str that ``from_json`` turns back into an equal value, tuples and int keys included.

    Args:
      value: None, bool, int, finite float, str, or tuples, lists and dicts of these (dict keys: any of
        these but lists and dicts).
      where: str, names the value in errors.
    Raises:
      TypeError: ``value`` holds anything else (a set, an Enum, a datetime, NaN...).
    """
    return json.dumps(_tagged(value, where), allow_nan=False)


def from_json(text: str) -> Any:
    """The value ``to_json`` wrote as ``text``."""
    return json.loads(text, object_hook=_untag)


@functools.lru_cache(maxsize=64)
def _dataset(name: str, config_json: str):
    """The reasoning-gym dataset ``name`` built from the JSON of its arguments; one instance per process."""
    return _reasoning_gym("reasoning_gym_reward").create_dataset(name, **from_json(config_json))


def _check_name(caller: str, name: Any) -> None:
    registry = _reasoning_gym(caller).factory.DATASETS
    if not isinstance(name, str) or name not in registry:
        close = difflib.get_close_matches(str(name), registry, n=3)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ConfigError(
            f"{caller}: `name` {name!r} is not a reasoning-gym dataset; {hint}"
            f"reasoning_gym.factory.DATASETS lists all {len(registry)}"
        )


def _config_json(name: str, size: Any, seed: Any, config: Mapping[str, Any] | None) -> str:
    """The JSON of ``create_dataset(name, ...)``'s keyword arguments, after checking them against the dataset."""
    caller = "load_reasoning_gym"
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{caller}: `size` must be an int >= 1, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{caller}: `seed` must be an int, got {seed!r}")
    config = {} if config is None else config
    if not isinstance(config, Mapping):
        raise TypeError(f"{caller}: `config` must be a dict of the dataset's options, got {type(config).__name__}")
    for key in ("size", "seed"):
        if key in config:
            raise ValueError(f"{caller}: pass `{key}` as an argument, not in `config` (got config[{key!r}])")
    _, config_cls = _reasoning_gym(caller).factory.DATASETS[name]
    options = sorted(f.name for f in dataclasses.fields(config_cls) if f.name not in ("size", "seed"))
    unknown = sorted(set(config) - set(options))
    if unknown:
        raise ValueError(
            f"{caller}: `config` has unknown option(s) {unknown} for {name!r}; its options are {options}"
        )
    return to_json({"size": size, "seed": seed, **config}, where=f"{caller}: `config`")


def _prompt(question: str, system_prompt: str | None, chat: bool) -> Any:
    if chat:
        return user_prompt(question, system=system_prompt)
    return question if system_prompt is None else f"{system_prompt}\n\n{question}"


def load_reasoning_gym(
    name: str,
    *,
    size: int,
    seed: int,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    chat: bool = True,
    config: Mapping[str, Any] | None = None,
) -> list[Example]:
    """Entries ``0 .. size-1`` of reasoning-gym's ``name`` generator with ``seed``, as Examples.

    The same arguments give the same examples; ``rg_config`` holds them, so
    ``reasoning_gym.create_dataset(name, **from_json(example["rg_config"]))[i]`` regenerates entry i.

    Args:
      name: str, a reasoning-gym dataset, e.g. "chain_sum", "leg_counting", "basic_arithmetic", "arc_agi".
      size: int >= 1, the number of examples.
      seed: int, the generator's seed.
      system_prompt: str or None, the instruction before each question; None: none. The default asks for
        ``<think>...</think><answer>...</answer>``, the layout ``reasoning_gym_reward`` and ``format_reward`` read.
      chat: bool. True: ``prompt`` is chat messages (system, user); False: one str, the system prompt, a blank
        line and the question.
      config: dict or None, the dataset's own options (fields of its config dataclass, e.g.
        ``{"min_terms": 2, "max_terms": 3}`` for chain_sum); values must be JSON-writable (see ``to_json``).
    Returns:
      list of ``size`` Examples with the fields in the module docstring.
    Raises:
      ImportError: reasoning-gym is not installed.
      ValueError: ``name`` is not a reasoning-gym dataset, ``size`` is not an int >= 1, ``seed`` is not an int,
        or ``config`` has an unknown option, sets size/seed, or is rejected by the dataset.
      TypeError: ``system_prompt`` is not a str or None, or ``config`` is not a dict of JSON-writable values.
    """
    caller = "load_reasoning_gym"
    _check_name(caller, name)
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise TypeError(f"{caller}: `system_prompt` must be a str or None, got {type(system_prompt).__name__}")
    config_json = _config_json(name, size, seed, config)
    try:
        dataset = _dataset(name, config_json)
    except Exception as e:  # noqa: BLE001 - configs assert their ranges; bad values fail in many ways
        raise ValueError(f"{caller}: dataset {name!r} rejected `config` {dict(config or {})!r}: {e!r}") from e
    examples = []
    for index in range(size):
        entry = dataset[index]
        where = f"{caller}: {name!r} entry {index}"
        if entry["answer"] is not None and not isinstance(entry["answer"], str):
            raise TypeError(f"{where}: `answer` is a {type(entry['answer']).__name__}; expected str or None")
        example = {
            "prompt": _prompt(entry["question"], system_prompt, chat),
            "question": entry["question"],
            "answer": entry["answer"],
            "rg_dataset": name,
            "rg_config": config_json,
            "rg_metadata": to_json(entry["metadata"], where=f"{where} metadata"),
        }
        examples.append(validate_example(example, required=FIELDS, where=where))
    return examples


def _column(name: str, values: Any, n: int) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"reasoning_gym_reward: `{name}` must be a list with one value per completion, "
            f"got {type(values).__name__}"
        )
    if len(values) != n:
        raise ValueError(
            f"reasoning_gym_reward: `{name}` has {len(values)} values but there are {n} completions; they must match"
        )
    return list(values)


def reasoning_gym_reward(
    completions: Sequence[str],
    *,
    question: Sequence[str],
    answer: Sequence[str | None],
    rg_dataset: Sequence[str],
    rg_config: Sequence[str],
    rg_metadata: Sequence[str],
    **kwargs: Any,
) -> list[float]:
    """Each completion's final answer graded by its dataset's ``score_answer`` (TRL reward signature).

    Args:
      completions: N str; the answer is the content of the last ``<answer>...</answer>``, stripped.
      question, answer, rg_dataset, rg_config, rg_metadata: N values each, the fields of the examples made by
        ``load_reasoning_gym`` (completion i's example at position i).
      **kwargs: other dataset columns and trainer arguments, ignored.
    Returns:
      list of N floats in [0, 1]: the scorer's value, clipped to [0, 1]. 0.0 for a completion without an
      ``<answer>`` block, and where the scorer raises or returns something that is not a finite number
      (some scorers raise on malformed answers; logged at debug level).
    Raises:
      ImportError: reasoning-gym is not installed.
      TypeError / ValueError: ``completions`` or a field is not a list of N values of its type, or
        ``rg_dataset`` names no reasoning-gym dataset.
    """
    del kwargs
    caller = "reasoning_gym_reward"
    if isinstance(completions, str):
        raise TypeError(f"{caller}: `completions` must be a list of str, got one str")
    n = len(completions)
    given = dict(
        question=question, answer=answer, rg_dataset=rg_dataset, rg_config=rg_config, rg_metadata=rg_metadata
    )
    columns = {key: _column(key, values, n) for key, values in given.items()}
    extract = _reasoning_gym(caller).utils.extract_answer
    rewards = []
    for i, completion in enumerate(completions):
        if not isinstance(completion, str):
            raise TypeError(f"{caller}: completion {i} must be a str, got {type(completion).__name__}")
        row = {key: column[i] for key, column in columns.items()}
        for key in ("rg_dataset", "rg_config", "rg_metadata"):
            if not isinstance(row[key], str):
                raise TypeError(f"{caller}: `{key}[{i}]` must be a str, got {type(row[key]).__name__}")
        _check_name(caller, row["rg_dataset"])
        predicted = extract(completion)
        if predicted is None:
            rewards.append(0.0)
            continue
        dataset = _dataset(row["rg_dataset"], row["rg_config"])
        entry = {"question": row["question"], "answer": row["answer"], "metadata": from_json(row["rg_metadata"])}
        try:
            value = float(dataset.score_answer(predicted, entry))
        except Exception as e:  # noqa: BLE001 - a scorer that chokes on a malformed answer: the answer is wrong
            logger.debug("%s: %r's scorer raised %r on completion %d; scored 0.0", caller, row["rg_dataset"], e, i)
            value = 0.0
        rewards.append(min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0)
    return rewards
