"""The non-finite guard: an optimizer update whose loss, gradient norm or parameter update holds a NaN or an
Inf is never applied, and the run either stops or skips it (``run.on_nonfinite``).

Two halves:
  * on the device, inside the jitted update (``make_update_fn``): ``nonfinite_code`` says which quantity is
    the first non-finite one (0: none), and ``keep_if_finite`` returns the old TrainState instead of the new
    one when it is not 0. The check is part of the update's program, so a bad update never reaches the
    parameters or the optimizer's moments, whatever the host does next, and no copy of the state is kept.
  * on the host, ``NonFiniteGuard.check`` reads the codes of a step's updates (they come back with the step's
    metrics, in the one transfer per step) and raises ``grpo_jax.errors.NonFiniteError`` (stop) or counts
    the skipped updates (skip), stopping anyway after ``max_skips`` in a row.

Why a guard at all: one NaN in the loss turns every parameter into NaN at the next update, and from then on
every sampled completion is garbage, every reward 0 and every checkpoint worthless, while the run goes on
to its last step and exits 0. Stopping before the step's checkpoint keeps the newest checkpoint finite.
(optax.apply_if_finite does the skip half for gradients alone and adds a counter to the optimizer state,
which would change the checkpoint layout; the loss and the update itself are checked here too.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from grpo_jax.errors import NonFiniteError

# code -> the quantity found non-finite, checked in this order (code 0: all finite)
QUANTITIES = {1: "loss", 2: "gradient norm", 3: "parameter update"}


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def nonfinite_code(loss: jax.Array, grad_norm: jax.Array, updates: Any) -> jax.Array:
    """int32 scalar: the ``QUANTITIES`` code of the first non-finite one of the loss (scalar), the gradient
    norm (scalar) and the parameter updates (a pytree of arrays, as optax returns them), or 0."""
    return jnp.select([~jnp.isfinite(loss), ~jnp.isfinite(grad_norm), ~_all_finite(updates)],
                      [jnp.int32(1), jnp.int32(2), jnp.int32(3)], jnp.int32(0))


def keep_if_finite(code: jax.Array, new_state: Any, old_state: Any) -> Any:
    """``new_state`` where ``code`` is 0, else ``old_state`` (two pytrees of one structure), leaf by leaf."""
    return jax.tree.map(lambda new, old: jnp.where(code == 0, new, old), new_state, old_state)


class NonFiniteGuard:
    """The host side of the guard for one run (or SFT warm-up).

    action: "stop" (raise NonFiniteError at the first non-finite update) or "skip" (count it; raise once
      ``max_skips`` updates in a row were skipped). ``what`` names the loop in messages ("step", "SFT step").
    """

    def __init__(self, action: str, max_skips: int, *, what: str = "step"):
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard: `action` must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.max_skips = max_skips
        self.what = what
        self.skips_in_a_row = 0

    def check(self, step: int, codes: Sequence[int], *, saved: str = "") -> int:
        """The number of the step's updates that were skipped (``codes``: each update's ``nonfinite_code``, in
        order). Raises NonFiniteError naming the step, the update and the quantity when the run must stop;
        ``saved`` is appended to the message (e.g. which checkpoint is the newest)."""
        skipped = 0
        for index, code in enumerate(int(c) for c in codes):
            if code == 0:
                self.skips_in_a_row = 0
                continue
            skipped += 1
            self.skips_in_a_row += 1
            where = (f"{self.what} {step}: the {QUANTITIES[code]} of optimizer update {index + 1} of {len(codes)} "
                     "is not finite (NaN or Inf)")
            if self.action == "stop":
                raise NonFiniteError(
                    f"{where}. The update was not applied and the run stopped before saving {self.what} {step}"
                    f"{saved}. Lower optimizer.learning_rate, check the rewards and the data, or set "
                    "run.on_nonfinite=skip to skip such updates.")
            if self.skips_in_a_row >= self.max_skips:
                raise NonFiniteError(
                    f"{where}, and {self.skips_in_a_row} updates in a row were skipped "
                    f"(run.max_nonfinite_skips={self.max_skips}): the run is not recovering, so it stopped before "
                    f"saving {self.what} {step}{saved}.")
        return skipped
