"""Procedural arithmetic ("2 + 2 = ?"): short prompts a tiny model trained from scratch can learn.

Example ``i`` of a task is a pure function of ``(config, seed, i)``: no global RNG, no state, so any
index can be regenerated anywhere (resume, multi-host, eval) and two processes agree bit for bit.

Difficulty is the config: number of operands, operand range and the operator set.
``ArithmeticConfig.from_difficulty(level)`` gives a ladder from single-digit sums upwards.
Results are always integers: a division is only generated when it is exact, and with
``allow_negative=False`` expressions whose value (or any intermediate value) is negative are resampled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Sequence
from fractions import Fraction

from grpo_jax.data.example import Example

OPERATORS = ("+", "-", "*", "/")
_MAX_TRIES = 1000


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """How hard the problems are.

    Attributes:
      min_operands / max_operands: each expression has between these many operands (inclusive).
      min_operand / max_operand: operand values are drawn uniformly from this inclusive range (>= 0).
      operators: subset of ``("+", "-", "*", "/")``; ``*`` and ``/`` bind tighter than ``+`` and ``-``.
      allow_negative: if False, the result and every partial sum/product are non-negative.
      template: the prompt; ``{expression}`` is replaced by e.g. ``"3 + 4"``.
    """

    min_operands: int = 2
    max_operands: int = 2
    min_operand: int = 0
    max_operand: int = 9
    operators: tuple[str, ...] = ("+",)
    allow_negative: bool = False
    template: str = "{expression} = ?"

    def __post_init__(self):
        name = "ArithmeticConfig"
        for field in ("min_operands", "max_operands", "min_operand", "max_operand"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name}: `{field}` must be an int, got {value!r}")
        if self.min_operands < 2:
            raise ValueError(f"{name}: `min_operands` must be >= 2, got {self.min_operands}")
        if self.max_operands < self.min_operands:
            raise ValueError(
                f"{name}: `max_operands` ({self.max_operands}) must be >= `min_operands` ({self.min_operands})"
            )
        if self.min_operand < 0:
            raise ValueError(f"{name}: `min_operand` must be >= 0, got {self.min_operand}")
        if self.max_operand < self.min_operand:
            raise ValueError(
                f"{name}: `max_operand` ({self.max_operand}) must be >= `min_operand` ({self.min_operand})"
            )
        if isinstance(self.operators, str) or not isinstance(self.operators, Sequence):
            raise TypeError(f"{name}: `operators` must be a tuple of operator strings, got {self.operators!r}")
        object.__setattr__(self, "operators", tuple(self.operators))
        if not self.operators:
            raise ValueError(f"{name}: `operators` is empty; expected a subset of {OPERATORS}")
        bad = [op for op in self.operators if op not in OPERATORS]
        if bad:
            raise ValueError(f"{name}: unknown operator(s) {bad}; expected a subset of {OPERATORS}")
        if "/" in self.operators and self.max_operand < 1:
            raise ValueError(f"{name}: operator '/' needs `max_operand` >= 1 (a non-zero divisor)")
        if "{expression}" not in self.template:
            raise ValueError(f"{name}: `template` must contain '{{expression}}', got {self.template!r}")

    @classmethod
    def from_difficulty(cls, level: int, **overrides) -> ArithmeticConfig:
        """A preset ladder; ``overrides`` replace any field of the preset.

        0: a + b, single digits            3: three operands < 100, + -
        1: a ± b, single digits            4: two to three operands < 100, + - *
        2: a ± b, operands < 100           5: two to four operands < 1000, + - * /, negatives allowed
        Levels above 5 add an operand and a digit per level.
        """
        if not isinstance(level, int) or level < 0:
            raise ValueError(f"ArithmeticConfig.from_difficulty: `level` must be an int >= 0, got {level!r}")
        presets = [
            dict(max_operand=9, operators=("+",)),
            dict(max_operand=9, operators=("+", "-")),
            dict(max_operand=99, operators=("+", "-")),
            dict(min_operands=3, max_operands=3, max_operand=99, operators=("+", "-")),
            dict(max_operands=3, max_operand=99, operators=("+", "-", "*")),
            dict(max_operands=4, max_operand=999, operators=OPERATORS, allow_negative=True),
        ]
        if level < len(presets):
            preset = presets[level]
        else:
            extra = level - (len(presets) - 1)
            preset = dict(max_operands=4 + extra, max_operand=10 ** (3 + extra) - 1,
                          operators=OPERATORS, allow_negative=True)
        return cls(**{**preset, **overrides})


def example_rng(seed: int | str, index: int) -> random.Random:
    """Example ``index``'s own generator: a hash of (seed, index) seeds it, so streams are independent per
    example and stable across Python versions (random.Random(int) and randint are stable). A task other than
    arithmetic puts its name in ``seed`` ("products:0") to get streams of its own."""
    digest = hashlib.sha256(f"grpo_jax.arithmetic:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "little"))


def evaluate(operands: Sequence[int], operators: Sequence[str]) -> tuple[Fraction, bool]:
    """Value of ``operands[0] op[0] operands[1] ...`` with the usual precedence, exactly.

    Returns ``(value, ok)`` where ``ok`` is False on division by zero. Also used to reject expressions
    whose intermediate values are negative or fractional.
    """
    terms: list[Fraction] = [Fraction(operands[0])]
    signs: list[int] = [1]
    for op, x in zip(operators, operands[1:], strict=True):
        if op in "+-":
            terms.append(Fraction(x))
            signs.append(1 if op == "+" else -1)
        elif op == "*":
            terms[-1] *= x
        else:
            if x == 0:
                return Fraction(0), False
            terms[-1] /= x
    return sum((s * t for s, t in zip(signs, terms, strict=True)), Fraction(0)), True


def _acceptable(operands, operators, config: ArithmeticConfig) -> Fraction | None:
    value, ok = evaluate(operands, operators)
    if not ok or value.denominator != 1:
        return None
    # Every prefix (split at + / -) must also be integral (exact divisions only) and, if asked, >= 0.
    for k in range(1, len(operands)):
        prefix, ok = evaluate(operands[: k + 1], operators[:k])
        if not ok:
            return None
        if not config.allow_negative and prefix < 0:
            return None
    if "/" in operators:
        # each product/quotient chain must be integral at every step, e.g. 7 / 2 * 2 is rejected.
        acc = Fraction(operands[0])
        for op, x in zip(operators, operands[1:], strict=True):
            if op in "+-":
                acc = Fraction(x)
            elif op == "*":
                acc *= x
            else:
                acc /= x
                if acc.denominator != 1:
                    return None
    if not config.allow_negative and value < 0:
        return None
    return value


def arithmetic_example(index: int, *, seed: int = 0, config: ArithmeticConfig | None = None) -> Example:
    """Example ``index`` of the arithmetic task with ``seed``: a pure function of its arguments.

    Fields: ``prompt`` (the template applied to the expression), ``expression``, ``answer`` and
    ``final_answer`` (both the integer result as a string, e.g. ``"-12"``), ``num_operands``.
    """
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"arithmetic_example: `index` must be an int >= 0, got {index!r}")
    config = config or ArithmeticConfig()
    rng = example_rng(seed, index)
    for _ in range(_MAX_TRIES):
        n = rng.randint(config.min_operands, config.max_operands)
        operators = [rng.choice(config.operators) for _ in range(n - 1)]
        operands = [rng.randint(config.min_operand, config.max_operand) for _ in range(n)]
        # Divisions are made exact by construction: divisor d in [1, sqrt(max)], and the dividend (when
        # it starts a product chain) becomes d * q with d * q <= max_operand. Chained divisions that
        # still come out fractional are resampled.
        small = max(1, math.isqrt(config.max_operand))
        for j, op in enumerate(operators):
            if op == "/":
                divisor = rng.randint(max(1, min(config.min_operand, small)), small)
                operands[j + 1] = divisor
                if j == 0 or operators[j - 1] in "+-":
                    high = config.max_operand // divisor
                    low = min(-(-config.min_operand // divisor), high)
                    operands[j] = divisor * rng.randint(low, high)
        value = _acceptable(operands, operators, config)
        if value is None:
            continue
        parts = [str(operands[0])]
        for op, x in zip(operators, operands[1:], strict=True):
            parts += [op, str(x)]
        expression = " ".join(parts)
        answer = str(int(value))
        return {
            "prompt": config.template.format(expression=expression),
            "expression": expression,
            "answer": answer,
            "final_answer": answer,
            "num_operands": n,
        }
    raise RuntimeError(
        f"arithmetic_example: no valid expression in {_MAX_TRIES} tries for {config}; "
        "loosen the config (allow_negative=True, fewer '/' or '-')"
    )


class ArithmeticTask(Sequence):
    """A finite, indexable view of the arithmetic family: ``task[i] == arithmetic_example(i, seed, config)``.

    ``size`` fixes the epoch length for ``PromptStream``; examples are generated on access, not stored.
    """

    def __init__(self, size: int, *, seed: int = 0, config: ArithmeticConfig | None = None):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"ArithmeticTask: `size` must be an int >= 1, got {size!r}")
        self.size = size
        self.seed = seed
        self.config = config or ArithmeticConfig()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"ArithmeticTask: index {index} out of range for size {self.size}")
        return arithmetic_example(index, seed=self.seed, config=self.config)

    def __repr__(self) -> str:
        return f"ArithmeticTask(size={self.size}, seed={self.seed}, config={self.config})"
