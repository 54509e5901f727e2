"""Step rewards for process supervision: a rule that scores each *step* of a completion, not only its end.

A step reward function has TRL's calling convention but returns, for each completion, a list of
``(end, reward)`` pairs: ``end`` is the character offset just past the step's text in the completion and
``reward`` a float. The trainer maps ``end`` to the step's last token and turns the step rewards of a group
into per-token advantages with ``grpo_jax.losses.process_advantages`` (DeepSeekMath, section 4.1.3).

``arithmetic_step_rewards`` is a rule-based verifier for worked arithmetic: every line of the form
``<expression> = <number>`` (numbers, + - * /, parentheses) is a step, rewarded 1.0 when the expression
equals the number exactly (rational arithmetic, no floats) and 0.0 otherwise.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from grpo_jax.rewards import pyast

_STEP = re.compile(r"^(?P<lhs>[0-9\s+\-*/().]+)=\s*(?P<rhs>-?\d+(?:\.\d+)?)\s*$")
MAX_EXPRESSION_CHARS = 200  # longer "expressions" are not steps (and could be slow to evaluate)
MAX_DIGITS = 30  # numbers longer than this are not evaluated (2 ** 10000-style blow-ups are impossible anyway)

_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def evaluate_expression(text: str) -> Fraction | None:
    """The exact value of an arithmetic expression of numbers, + - * / and parentheses; None if the text
    is anything else, divides by zero, or has a number longer than MAX_DIGITS digits."""
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = pyast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            if len(str(node.value)) > MAX_DIGITS:
                raise ValueError("number too long")
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return value(node.left) / value(node.right)
        raise ValueError(f"not arithmetic: {type(node).__name__}")

    try:
        return value(tree.body)
    except (ValueError, ZeroDivisionError):
        return None


def arithmetic_step_rewards(completions: Sequence[str], **kwargs: Any) -> list[list[tuple[int, float]]]:
    """For each completion, ``(end, reward)`` for each line ``<expression> = <number>`` (see module docstring)."""
    del kwargs
    out: list[list[tuple[int, float]]] = []
    for text in completions:
        if not isinstance(text, str):
            raise TypeError(f"arithmetic_step_rewards: completions must be str, got {type(text).__name__}")
        steps: list[tuple[int, float]] = []
        offset = 0
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            match = _STEP.match(body)
            if match:
                lhs = evaluate_expression(match["lhs"])
                right = Fraction(match["rhs"])
                steps.append((offset + len(body), float(lhs is not None and lhs == right)))
            offset += len(line)
        out.append(steps)
    return out
