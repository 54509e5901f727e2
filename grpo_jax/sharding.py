"""Device meshes. One place decides how a mesh is built, so every caller gets the same axis semantics.

Meshes use ``AxisType.Auto`` on every axis: the compiler propagates shardings from the ``in_shardings`` /
``out_shardings`` we give ``jax.jit`` (classic pjit semantics). JAX >= 0.10 defaults ``jax.make_mesh`` to
Explicit axes, which would change how every jnp op inside our steps is typed, so we always say Auto.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


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
            f"make_mesh: mesh {dict(zip(names, sizes, strict=True))} needs {math.prod(sizes)} devices but "
            f"{len(devices)} are available"
        )
    return jax.make_mesh(
        tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names), devices=devices
    )


def make_hybrid_mesh(ici: Mapping[str, int], dcn: Mapping[str, int], *,
                     devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A multi-slice mesh: ``ici`` axes within a slice (fast interconnect), ``dcn`` axes across slices.

    Each mesh axis has size ici[axis] * dcn[axis] (missing = 1). Slices are the devices' ``slice_index``
    (Cloud TPU multi-slice); when all devices share one slice index (GPUs, CPUs, one TPU slice) they are
    grouped by host process instead, so ``dcn`` then spans hosts. One ``ici`` size may be -1 (the rest of a
    slice). Raises ValueError naming the shapes and the device count when they do not fit.
    """
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else devices)
    names = tuple(dict.fromkeys([*ici, *dcn]))
    dcn_shape = [int(dcn.get(n, 1)) for n in names]
    if any(s < 1 for s in dcn_shape):
        raise ValueError(f"make_hybrid_mesh: dcn sizes must be >= 1, got {dict(dcn)}")
    slices = math.prod(dcn_shape)
    if len(devices) % slices:
        raise ValueError(f"make_hybrid_mesh: {len(devices)} devices cannot form {slices} slices (dcn {dict(dcn)})")
    per_slice = len(devices) // slices
    ici_shape = [int(ici.get(n, 1)) for n in names]
    if ici_shape.count(-1) > 1 or any(s == 0 or s < -1 for s in ici_shape):
        raise ValueError(f"make_hybrid_mesh: ici sizes must be positive (one may be -1), got {dict(ici)}")
    if -1 in ici_shape:
        known = math.prod(s for s in ici_shape if s != -1)
        ici_shape[ici_shape.index(-1)] = per_slice // known if per_slice % known == 0 else -1
    if math.prod(ici_shape) != per_slice:
        raise ValueError(
            f"make_hybrid_mesh: ici {dict(ici)} does not fill a slice of {per_slice} devices "
            f"({len(devices)} devices in {slices} slices, dcn {dict(dcn)})"
        )
    tpu_slices = len({getattr(d, "slice_index", 0) for d in devices})
    hosts = len({d.process_index for d in devices})
    by_process = tpu_slices == 1
    if (hosts if by_process else tpu_slices) != slices:
        raise ValueError(f"make_hybrid_mesh: dcn {dict(dcn)} needs {slices} slices but the devices form "
                         f"{tpu_slices} slice(s) by slice_index and {hosts} host process(es)")
    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=by_process)
    return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


# ---- logical axes -> mesh axes ----------------------------------------------------------------------
#
# Parameters and activations name their axes logically; this one table says which mesh axes each name
# may be split over. Replicated ({"data": n}), FSDP ({"fsdp": n}) and FSDP x tensor ({"fsdp": a,
# "tensor": b}) runs use the same table: mesh axes that a mesh lacks are ignored, a mesh axis is used at
# most once per array (first come, first served), and a dimension that the mesh axis does not divide
# stays whole rather than failing (e.g. 2 kv heads on a 4-way tensor axis are replicated).

LogicalRules = tuple[tuple[str, tuple[str, ...]], ...]

DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),  # activations' rows: data parallel over both batch-like axes
    ("length", ()),
    ("embed", ("fsdp",)),  # parameters' model width: FSDP shards weights along it
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("mlp", ("tensor",)),
    ("vocab", ("tensor",)),
    ("layers", ()),
    ("lora_rank", ()),  # LoRA's rank axis: a few entries, replicated (grpo_jax.models.lora)
)


def logical_to_mesh_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES
) -> PartitionSpec:
    """PartitionSpec for an array of ``shape`` whose dimensions are named ``logical_axes``.

    Unknown logical names raise ValueError (a typo would otherwise silently replicate a weight).
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for name, size in zip(logical_axes, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; known: {', '.join(table)}")
        chosen: list[str] = []
        for axis in table[name]:
            if axis not in mesh.shape or axis in used or mesh.shape[axis] == 1:
                continue
            if size % (math.prod(mesh.shape[a] for a in chosen) * mesh.shape[axis]):
                continue
            chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def logical_sharding(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_mesh_spec(logical_axes, shape, mesh, rules))


@dataclasses.dataclass(frozen=True)
class MeshRules:
    """A mesh plus the logical-axis table: what a model needs to constrain its activations."""

    mesh: Mesh
    rules: LogicalRules = DEFAULT_RULES

    def constrain(self, x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, logical_sharding(logical_axes, x.shape, self.mesh, self.rules))


def constrain(x: jax.Array, logical_axes: Sequence[str | None], mesh_rules: MeshRules | None) -> jax.Array:
    """Shard activation ``x`` by its logical axes; the identity without a mesh (single device)."""
    return x if mesh_rules is None else mesh_rules.constrain(x, logical_axes)
