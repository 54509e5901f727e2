"""Shared output of the benchmark scripts: print a markdown table, optionally append it to a file."""

from __future__ import annotations


def emit_table(lines: list[str], markdown_path: str | None) -> None:
    """Print the table (one markdown line per entry); append it to ``markdown_path`` when given."""
    table = "\n".join(lines)
    print(table)
    if markdown_path:
        with open(markdown_path, "a", encoding="utf-8") as f:
            f.write(table + "\n")
