"""Small LaTeX text helpers shared by the task loaders and the rewards (standard library only)."""

from __future__ import annotations


def brace_group(text: str, open_index: int) -> str | None:
    r"""The content of the brace group whose ``{`` is at ``text[open_index]``, nested braces balanced;
    None if it never closes. A backslash escapes the next character (``\{``, ``\}``, ``\\``)."""
    depth, k = 0, open_index
    while k < len(text):
        ch = text[k]
        if ch == "\\":
            k += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : k]
        k += 1
    return None
