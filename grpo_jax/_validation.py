"""Input checks shared by the public API: every error names the argument, its value and what was expected.

Shape and dtype checks work on anything with ``.shape``/``.dtype`` (NumPy arrays, ``jax.Array``, tracers), so
they run at trace time under ``jax.jit`` and cost nothing at run time. Value checks (NaN) need concrete
values; under ``jit`` the values are abstract and those checks are skipped (documented where used).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def require_array(fn: str, name: str, x: Any) -> None:
    if x is None or (not hasattr(x, "shape") and not isinstance(x, (list, tuple))):
        raise TypeError(f"{fn}: `{name}` must be an array, got {type(x).__name__}")


def require_rank(fn: str, name: str, x: Any, ranks: Sequence[int], layout: str) -> None:
    """Raise ValueError unless ``x.ndim`` is one of ``ranks``; ``layout`` describes the expected shape."""
    require_array(fn, name, x)
    if len(shape_of(x)) not in ranks:
        raise ValueError(f"{fn}: `{name}` must be {layout}, got shape {shape_of(x)}")


def require_same_shape(fn: str, name: str, x: Any, ref_name: str, ref: Any) -> None:
    require_array(fn, name, x)
    if shape_of(x) != shape_of(ref):
        raise ValueError(
            f"{fn}: `{name}` has shape {shape_of(x)} but `{ref_name}` has shape {shape_of(ref)}; "
            "they must match"
        )


def require_floating(fn: str, name: str, x: Any) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{fn}: `{name}` must be a floating-point array, got dtype {jnp.result_type(x)}")


def require_integer(fn: str, name: str, x: Any) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
        raise TypeError(f"{fn}: `{name}` must be an integer array, got dtype {jnp.result_type(x)}")


def require_choice(fn: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{fn}: unknown {name}={value!r}; expected one of {', '.join(map(repr, choices))}")


def require_positive(fn: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """A real scalar > 0 (>= 0 with allow_zero): Python, NumPy or JAX. A traced scalar passes unchecked."""
    if isinstance(value, jax.core.Tracer) and np.shape(value) == ():
        return
    ok = not isinstance(value, bool) and np.shape(value) == ()
    try:
        number = float(value) if ok else float("nan")
    except (TypeError, ValueError):
        ok = False
    ok = ok and np.isfinite(number) and (number >= 0 if allow_zero else number > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{fn}: `{name}` must be a finite number {bound}, got {value!r}")


def as_int(fn: str, name: str, value: Any, *, minimum: int, what: str = "") -> int:
    """``value`` as a Python int >= minimum (accepts NumPy/JAX integer scalars), else ValueError."""
    try:
        if isinstance(value, bool) or isinstance(value, jax.core.Tracer):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{fn}: `{name}` must be an int >= {minimum}{what}, got {value!r}")
    return number


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def require_finite(fn: str, name: str, x: Any) -> None:
    """Raise ValueError if a concrete ``x`` holds NaN or inf; a no-op on tracers (values unknown under jit)."""
    if not is_concrete(x):
        return
    values = np.asarray(jax.device_get(x), dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        where = [tuple(int(i) for i in idx) for idx in np.argwhere(bad)[:5]]
        raise ValueError(
            f"{fn}: `{name}` contains {int(bad.sum())} non-finite value(s) (NaN or inf), "
            f"first at index {where}"
        )
