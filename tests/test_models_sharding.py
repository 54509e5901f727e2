"""The model on an 8-device mesh: sharded loading reads only each device's slice, and logits match."""

import numpy as np
import pytest

pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from hf_checkpoints import make_checkpoint  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

from grpo_jax.models import forward, hf_io, load_pretrained  # noqa: E402
from grpo_jax.sharding import make_mesh  # noqa: E402

MESHES = {"fsdp8": {"fsdp": 8}, "fsdp4_tensor2": {"fsdp": 4, "tensor": 2}, "data8": {"data": 8}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    make_checkpoint(path, "qwen3_qknorm_gqa4")  # hidden 32, 8 heads, 2 kv heads, mlp 48, vocab 96
    return path


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_sharded_forward_equals_single_device(checkpoint, mesh_name):
    mesh = make_mesh(MESHES[mesh_name])
    single_model, single_params = load_pretrained(checkpoint)
    model, params = load_pretrained(checkpoint, mesh=mesh)
    ids = np.random.RandomState(0).randint(0, 96, (8, 10))
    mask = np.ones_like(ids)
    mask[:4, :3] = 0  # left padding on half the rows
    expected = np.asarray(forward(single_model, single_params, jnp.asarray(ids), jnp.asarray(mask)))

    rows = NamedSharding(mesh, P(tuple(a for a in mesh.axis_names if a in ("data", "fsdp")) or None))
    step = jax.jit(lambda p, i, m: forward(model, p, i, m))
    out = step(params, jax.device_put(ids, rows), jax.device_put(mask, rows))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=0)


def test_parameters_are_placed_by_the_rule_table(checkpoint):
    _, params = load_pretrained(checkpoint, mesh=make_mesh({"fsdp": 4, "tensor": 2}))
    attn = params["layers_0"]["attn"]
    assert attn["q_kernel"].sharding.spec == P("fsdp", "tensor", None)  # [embed, heads, head_dim]
    assert attn["k_kernel"].sharding.spec == P("fsdp", "tensor", None)  # 2 kv heads over tensor=2
    assert params["layers_0"]["mlp"]["down_kernel"].sharding.spec == P("tensor", "fsdp")
    assert params["lm_head"].sharding.spec == P("fsdp", "tensor")
    # each device holds 1/8 of the q kernel
    shard = attn["q_kernel"].addressable_shards[0].data
    assert shard.shape == (32 // 4, 8 // 2, 16)
    _, replicated = load_pretrained(checkpoint, mesh=make_mesh({"data": 8}))
    assert replicated["lm_head"].sharding.spec == P(None, None)


def test_loading_reads_only_each_devices_slice(checkpoint, monkeypatch):
    """No full host copy per device: with fsdp=8 each read of the embedding is 1/8 of its rows' width."""
    reads = []
    original = hf_io.read_block

    def recording(kind, source, index, shape):
        block = original(kind, source, index, shape)
        reads.append((shape, block.shape))
        return block

    monkeypatch.setattr(hf_io, "read_block", recording)
    load_pretrained(checkpoint, mesh=make_mesh({"fsdp": 8}))
    embedding_reads = [block for shape, block in reads if shape == (96, 32)]
    assert len(embedding_reads) == 8 and all(b == (96, 4) for b in embedding_reads)
    # every matrix is split 8 ways along its embed axis: each read is exactly 1/8 of the tensor
    matrices = [(shape, block) for shape, block in reads if len(shape) >= 2]
    assert len(matrices) > 20
    assert all(np.prod(block) * 8 == np.prod(shape) for shape, block in matrices)
