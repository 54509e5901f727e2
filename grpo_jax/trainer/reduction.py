"""How training metrics combine: over the micro-batches of one optimizer update, and over the updates of a step.

An objective (grpo_jax.trainer.step) returns each metric as a ``Metric``: its value on one micro-batch and the
name of its reduction, so ``make_update_fn`` can combine metrics whose names it does not know. The reductions,
over the K micro-batches of one update (inside its jit), so that the result is the metric of the whole
minibatch:

  "loss"    weighted by the loss's micro-batch weights (``micro_batch_weights`` with the update's
            ``token_weighted``): for a metric aggregated as the loss is, such as the loss itself
  "tokens"  weighted by each micro-batch's share of the loss tokens: for a mean over loss tokens
  "rows"    weighted by rows (every micro-batch has as many): for a mean over rows
  "max"     the largest value among the micro-batches that have loss tokens (one without has none to offer)
  "min"     the smallest, likewise

Over the optimizer updates of one step (on the host, ``mean_over_updates``): the max for "max", the min for
"min", the plain mean otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.distributed import to_host

REDUCTIONS = ("loss", "tokens", "rows", "max", "min")
WEIGHTED = ("loss", "tokens", "rows")  # the reductions that are a weighted sum; their micro-batch weights' names


@flax.struct.dataclass
class Metric:
    """A metric's value (a scalar array) and how it reduces over micro-batches and updates (``REDUCTIONS``).
    A pytree whose only leaf is ``value``: it passes through jit, tree maps and ``to_host`` with ``reduce``
    kept as static data."""

    value: jax.Array
    reduce: str = flax.struct.field(pytree_node=False)

    def __post_init__(self):
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"Metric: reduce={self.reduce!r}; expected one of {REDUCTIONS}")


def initial(metric: Metric) -> Metric:
    """The value a micro-batch accumulation of ``metric`` (a Metric of arrays or of shapes) starts from: -inf
    for "max", +inf for "min", 0 for the weighted sums."""
    start = {"max": -jnp.inf, "min": jnp.inf}.get(metric.reduce, 0.0)
    return Metric(jnp.full(metric.value.shape, start, metric.value.dtype), metric.reduce)


def accumulate(total: Metric, micro: Metric, weights: Mapping[str, jax.Array]) -> Metric:
    """``total`` with one more micro-batch's value ``micro`` combined in; ``weights`` are that micro-batch's
    weights by reduction name ("loss", "tokens", "rows"), each summing to 1 over the update's micro-batches
    (the token weights sum to 0 when the minibatch has no loss token)."""
    if micro.reduce != total.reduce:
        raise ValueError(f"accumulate: a metric reduced by {total.reduce!r} got a value reduced by {micro.reduce!r}")
    if micro.reduce in WEIGHTED:
        return Metric(total.value + weights[micro.reduce] * micro.value, micro.reduce)
    extreme = jnp.maximum if micro.reduce == "max" else jnp.minimum
    # a micro-batch without loss tokens has no value (its ratio, say, is a placeholder 0): it leaves the total
    return Metric(jnp.where(weights["tokens"] > 0, extreme(total.value, micro.value), total.value), micro.reduce)


def mean_over_updates(history: Sequence[Mapping[str, Metric]]) -> dict[str, float]:
    """One step's metrics from its optimizer updates' (``make_update_fn``'s second output, in order): each
    reduced over the updates as its ``reduce`` says (max, min, else the mean). The whole history comes from
    the device in one transfer, so a step waits for the device once; host (NumPy) values are accepted too.
    The names are the first update's; an empty history gives {}."""
    if not history:
        return {}
    host = to_host(list(history))
    out = {}
    for name, first in host[0].items():
        values = np.array([float(update[name].value) for update in host])
        out[name] = float(values.max() if first.reduce == "max" else values.min() if first.reduce == "min"
                          else values.mean())
    return out


def to_floats(metrics: Mapping[str, Metric]) -> dict[str, float]:
    """One update's metrics as Python floats (one transfer from the device)."""
    return {name: float(metric.value) for name, metric in to_host(dict(metrics)).items()}
