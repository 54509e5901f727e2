"""Mesh construction: Auto axis types, -1 fills the remaining devices, bad shapes fail naming both numbers."""

import jax
import pytest
from jax.sharding import AxisType

from grpo_jax.sharding import make_mesh


def test_mesh_shapes_and_axis_types():
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert make_mesh({"data": 4}, devices=jax.devices()[:4]).size == 4


@pytest.mark.parametrize(
    "axes, pattern",
    [
        ({"data": 3}, r"mesh \{'data': 3\} needs 3 devices but 8 are available"),
        ({"data": 3, "fsdp": -1}, r"8 devices are not divisible by the fixed axes' product 3"),
        ({"data": -1, "fsdp": -1}, r"axis sizes must be positive \(one may be -1\)"),
        ({"data": 0}, r"axis sizes must be positive"),
        ({}, r"`axes` is empty"),
    ],
)
def test_bad_mesh_shapes(axes, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_mesh(axes)
