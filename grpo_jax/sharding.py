"""Device meshes. One place decides how a mesh is built, so every caller gets the same axis semantics.

Meshes use ``AxisType.Auto`` on every axis: the compiler propagates shardings from the ``in_shardings`` /
``out_shardings`` we give ``jax.jit`` (classic pjit semantics). JAX >= 0.10 defaults ``jax.make_mesh`` to
Explicit axes, which would change how every jnp op inside our steps is typed, so we always say Auto.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh


def make_mesh(axes: Mapping[str, int], *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a Mesh with Auto axis types.

    Args:
      axes: ordered mapping axis name -> size, e.g. {"data": 2, "fsdp": 2, "tensor": 2}. One size may be -1,
        meaning "all remaining devices".
      devices: devices to use (default: all of ``jax.devices()``).

    Raises ValueError naming the requested shape and the device count when they do not fit.
    """
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(axes)
    sizes = [int(s) for s in axes.values()]
    if not names:
        raise ValueError("make_mesh: `axes` is empty; give at least one axis, e.g. {'data': -1}")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"make_mesh: axis sizes must be positive (one may be -1), got {dict(axes)}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(
                f"make_mesh: mesh {dict(axes)} cannot be completed: {len(devices)} devices are not "
                f"divisible by the fixed axes' product {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"make_mesh: mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices but "
            f"{len(devices)} are available"
        )
    return jax.make_mesh(
        tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names), devices=devices
    )
