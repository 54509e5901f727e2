"""Procedural products of large numbers ("48213 * 930177 = ?"): arithmetic a small model cannot do in its head
but can do with a Python tool.

Each operand has 4 to 6 digits (the digit count drawn uniformly, then the value uniformly among numbers of that
many digits), so answers have 7 to 12 digits. Example ``i`` is a pure function of ``(seed, i)`` like the
arithmetic task's (grpo_jax.data.arithmetic), so any index can be regenerated anywhere.

Fields: ``prompt``, ``expression`` ("48213 * 930177"), ``answer`` / ``final_answer`` (the product as a string),
and ``tool_code``: Python that computes the answer (the expression itself), which a supervised warm-up turns into
tool-use traces (grpo_jax.trainer.sft).
"""

from __future__ import annotations

from collections.abc import Sequence

from grpo_jax.data.arithmetic import example_rng
from grpo_jax.data.example import Example

MIN_DIGITS, MAX_DIGITS = 4, 6


def products_example(index: int, *, seed: int = 0, template: str = "{expression} = ?") -> Example:
    """Example ``index`` of the products task with ``seed`` (see the module docstring)."""
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"products_example: `index` must be an int >= 0, got {index!r}")
    rng = example_rng(f"products:{seed}", index)
    operands = []
    for _ in range(2):
        digits = rng.randint(MIN_DIGITS, MAX_DIGITS)
        operands.append(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    expression = f"{operands[0]} * {operands[1]}"
    answer = str(operands[0] * operands[1])
    return {"prompt": template.format(expression=expression), "expression": expression, "answer": answer,
            "final_answer": answer, "tool_code": expression}


class ProductsTask(Sequence):
    """``size`` examples of the products task: ``task[i] == products_example(i, seed=seed, template=template)``."""

    def __init__(self, size: int, *, seed: int = 0, template: str = "{expression} = ?"):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"ProductsTask: `size` must be an int >= 1, got {size!r}")
        if "{expression}" not in template:
            raise ValueError(f"ProductsTask: `template` must contain '{{expression}}', got {template!r}")
        self.size, self.seed, self.template = size, seed, template

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"ProductsTask: index {index} out of range for size {self.size}")
        return products_example(index, seed=self.seed, template=self.template)
