"""Shared output of the benchmark scripts: the machine they ran on, and a markdown table printed and
optionally appended to a file."""

from __future__ import annotations

import platform


def machine_description() -> str:
    """"Machine: <cpu>, <n> x <device kind>, jax <version>" for a table's heading line."""
    import jax

    return (f"Machine: {platform.processor() or platform.machine()}, {jax.device_count()} x "
            f"{jax.devices()[0].device_kind}, jax {jax.__version__}")


def emit_table(lines: list[str], markdown_path: str | None) -> None:
    """Print the table (one markdown line per entry); append it to ``markdown_path`` when given."""
    table = "\n".join(lines)
    print(table)
    if markdown_path:
        with open(markdown_path, "a", encoding="utf-8") as f:
            f.write(table + "\n")
