"""Thread-safe ``ast.parse`` and compiling of AST objects, for rewards that run in worker threads.

CPython 3.11 keeps the AST converter's recursion counter in per-interpreter state shared by all threads,
so ``ast.parse`` (C tree -> Python objects) and ``compile`` of an ``ast`` tree (the other way) running in
two threads at once can fail with ``SystemError: AST constructor recursion depth mismatch`` (CPython
gh-106905 and the races around it; seen here with ``code_reward``'s thread pool). Every such call in
grpo_jax goes through one lock. Compiling source text does not use that state and needs no lock.
"""

from __future__ import annotations

import ast
import threading
from types import CodeType

_LOCK = threading.Lock()


def parse(source: str, mode: str = "exec") -> ast.AST:
    """``ast.parse(source, mode=mode)`` under the lock."""
    with _LOCK:
        return ast.parse(source, mode=mode)


def compile_tree(tree: ast.AST, filename: str, mode: str = "exec") -> CodeType:
    """``compile(tree, filename, mode)`` of an AST object under the lock."""
    with _LOCK:
        return compile(tree, filename, mode)
