"""Compile counts per jitted program, from JAX's own compile events.

JAX times every backend compile of a jitted function and reports it to its monitoring listeners as the event
``BACKEND_COMPILE_EVENT`` with ``fun_name="jit(<the function's __name__>)"`` (a ``functools.partial``
reports the name of the function it wraps). One listener, registered when this module is imported, counts
those events per function name. Nothing runs inside traced code, so a trace that is never
compiled (``jax.eval_shape``, ``jax.make_jaxpr``, ``.trace()``, ``.lower()``) counts nothing, and neither
does a call that jit's in-memory cache serves. An executable loaded from JAX's persistent compilation
cache *is* counted: the load happens inside the same timed compile call, and a run that compiles a new
program per step is as much a bug whether or not a cache hides the cost (tests/test_compilation.py).

Counts are per name, so a program counted here needs a name no other jitted function in the process has:
``named`` gives a function one. grpo_jax's programs: ``_generate_program`` (the sampler,
``grpo_jax.sampling.compile_count``), and ``logprobs``, ``grpo_update`` and ``sft_update``
(``grpo_jax.trainer.step.compile_counts``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import TypeVar

import jax

# jax._src.dispatch.BACKEND_COMPILE_EVENT (not public API; tests/test_compilation.py checks they agree)
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_COUNTS: collections.Counter[str] = collections.Counter()
_LOCK = threading.Lock()  # compiles may be reported from several threads

F = TypeVar("F", bound=Callable)


def _function_name(fun_name: str) -> str:
    """"jit(name)" -> "name" (JAX's fun_name of a jitted function); anything else as it is."""
    return fun_name[4:-1] if fun_name.startswith("jit(") and fun_name.endswith(")") else fun_name


def _on_event_duration(event: str, duration_secs: float, **kwargs) -> None:
    if event == BACKEND_COMPILE_EVENT:
        name = _function_name(str(kwargs.get("fun_name", "")))
        with _LOCK:
            _COUNTS[name] += 1


def install() -> None:
    """Register the listener with jax.monitoring, once: calling it again (also after
    ``jax.monitoring.clear_event_listeners``) leaves exactly one registration. Done at import."""
    try:
        jax.monitoring.unregister_event_duration_listener(_on_event_duration)
    except (AssertionError, ValueError):  # not registered
        pass
    jax.monitoring.register_event_duration_secs_listener(_on_event_duration)


def count(name: str) -> int:
    """How many times a jitted function named ``name`` has been compiled (or loaded from the persistent
    compilation cache) in this process since this module was imported."""
    with _LOCK:
        return _COUNTS[name]


def counts() -> dict[str, int]:
    """Every function name seen -> its compile count (``count``)."""
    with _LOCK:
        return dict(_COUNTS)


def named(name: str) -> Callable[[F], F]:
    """Decorator: set a function's ``__name__`` and ``__qualname__`` to ``name``, the name its jit compiles
    are counted (and its HLO module is called) by. A ``functools.partial`` of it keeps the name."""
    def rename(fn: F) -> F:
        fn.__name__ = fn.__qualname__ = name
        return fn
    return rename


install()
