"""docs/scaling.md: its tables are what benchmarks/scaling_table.py computes, and the computation's inputs are right."""

import math
import re
from pathlib import Path

import jax
import pytest
from benchmark_scripts import load

from grpo_jax.models import build_model, param_shapes, param_shardings
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.memory import kv_cache_bytes_per_token, parameter_count
from grpo_jax.sharding import make_mesh
from grpo_jax.trainer.config import parse_mesh

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table():
    return load("scaling_table")


# Totals the Qwen2.5 configs give (the sum of the checkpoints' tensor sizes); the issue's rounded figures.
EXACT = {"Qwen2.5-0.5B": 494_032_768, "Qwen2.5-1.5B": 1_543_714_304, "Qwen2.5-7B": 7_615_616_512,
         "Qwen2.5-32B": 32_763_876_352}
ROUNDED = {"Qwen2.5-0.5B": 494e6, "Qwen2.5-1.5B": 1.54e9, "Qwen2.5-7B": 7.6e9, "Qwen2.5-32B": 32.8e9}


@pytest.mark.parametrize("name", list(EXACT))
def test_parameter_counts_of_the_qwen25_architectures(table, name):
    n = parameter_count(table.model_config(name))
    assert n == EXACT[name]
    assert abs(n - ROUNDED[name]) <= 0.01 * ROUNDED[name]


def test_doc_tables_are_the_scripts_output(table):
    text = (ROOT / "docs" / "scaling.md").read_text()
    found = table.doc_blocks(text)
    computed = table.blocks()
    assert set(found) == set(computed), "docs/scaling.md lacks a generated block"
    for name, body in computed.items():
        assert found[name] == body, f"block {name!r} is stale: run python benchmarks/scaling_table.py --write"
    # every model x platform has its row, and every recommended mesh is a valid run.mesh for 8 devices
    rows = [line for line in found["scaling"].splitlines()[2:]]
    assert len(rows) == len(table.QWEN25) * len(table.PLATFORMS)
    for line in rows:
        mesh = line.split(" | ")[2].strip("`()")
        assert math.prod(parse_mesh(mesh).values()) == 8, line
    # the script reads mesh strings as run.mesh does, and names valid ones in its advice
    advised = [m for line in rows for m in re.findall(r"`((?:data|fsdp|tensor):[^`]*)`", line)]
    for mesh in [*table.MESHES, *advised, *(m for n in (16, 64) for m in table.scaled_meshes(n))]:
        assert table.parse_mesh(mesh) == parse_mesh(mesh), mesh


def test_fake_mesh_shards_match_real_shardings(table):
    """The script's per-device element counts (mesh rules on axis sizes alone) equal the shard shapes of the
    model's real NamedShardings on 8 devices, including dimensions a mesh axis does not divide."""
    config = ModelConfig(model_type="qwen2", vocab_size=100, hidden_size=48, intermediate_size=72,
                         num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                         qkv_bias=True, tie_word_embeddings=False)
    layout = table.param_layout(config)
    model = build_model(config)
    shapes = param_shapes(model)
    for mesh in ("data:8", "fsdp:8", "fsdp:4,tensor:2", "fsdp:2,tensor:4", "tensor:8"):
        axes = parse_mesh(mesh)
        shardings = param_shardings(model, make_mesh(axes))
        real = sum(math.prod(sh.shard_shape(s.shape)) for sh, s in zip(jax.tree.leaves(shardings),
                                                                         jax.tree.leaves(shapes), strict=True))
        assert layout.elements_per_device(axes)[0] == real, mesh


@pytest.mark.parametrize("name", list(EXACT))
def test_estimate_terms(table, name):
    config = table.model_config(name)
    layout = table.param_layout(config)
    w = table.WORKLOAD
    n = parameter_count(config)
    replicated = table.estimate(config, "data:8", 1, w, layout)
    assert replicated.params == 4 * n and replicated.moments == 8 * n and replicated.reference == 4 * n
    sharded = table.estimate(config, "fsdp:8", 2, w, layout)
    # every Qwen2.5 width divides by 8; only the q/k/v biases (no "embed" axis) stay whole on each device
    assert 4 * n / 8 < sharded.params < 1.001 * 4 * n / 8 and sharded.grads == 2 * sharded.params
    # the prompts' slots once per prompt, the completions' per row
    slots = w.prompts * w.prompt_len + w.rows * w.completion_len
    assert sharded.kv_cache * 8 == kv_cache_bytes_per_token(config) * slots
    no_reference = table.estimate(config, "fsdp:8", 2, table.dataclasses.replace(w, beta=0.0), layout)
    assert no_reference.reference == 0
    assert sharded.peak == max(sharded.sampling_peak, sharded.update_peak)
    # the sampler's bf16 copy of the parameters, gathered whole once per rollout on an FSDP mesh (the
    # default): 2 bytes per parameter on every device, as without FSDP
    assert replicated.sampling_params == 2 * n and sharded.sampling_params == 2 * n
    # gathered layer by layer instead: the copy stays sharded like the parameters; none without the cast
    kept = table.dataclasses.replace(w, gather_params_once=False)
    per_step = table.estimate(config, "fsdp:8", 2, kept, layout)
    assert per_step.sampling_params == per_step.params / 2
    uncast = table.estimate(config, "fsdp:8", 2, table.dataclasses.replace(kept, cast_params_once=False), layout)
    assert uncast.sampling_params == 0 and per_step.sampling_peak - uncast.sampling_peak == per_step.sampling_params
    # not cast but gathered once: the fp32 masters, whole
    assert table.estimate(config, "fsdp:8", 2, table.dataclasses.replace(w, cast_params_once=False),
                          layout).sampling_params == 4 * n
    # split by tensor only (the norms and biases without a tensor-split axis stay whole on each device)
    assert n < table.estimate(config, "fsdp:4,tensor:2", 2, w, layout).sampling_params < 1.001 * 2 * n / 2
    bf16_params = table.dataclasses.replace(kept, param_bytes=2, moment_bytes=4, reference_bytes=2)
    assert table.estimate(config, "fsdp:8", 2, bf16_params, layout).sampling_params == 0  # nothing to convert


@pytest.mark.parametrize("temperature, arrays", [(1.0, 2), (0.7, 3)])
def test_decode_logit_term_covers_the_samplers_buffers(table, temperature, arrays):
    """The table counts three [rows, V] fp32 arrays for a decode step's sampling. XLA's buffer assignment of the
    sampler (a one-layer model, so the logits dominate) holds two at temperature 1 and three otherwise."""
    import jax.numpy as jnp

    from grpo_jax.sampling import SamplingConfig, _generate_jit

    vocab, prompts, g = 32768, 8, 8
    config = ModelConfig(model_type="qwen2", vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         tie_word_embeddings=True)
    model = build_model(config)
    sampling = SamplingConfig(num_generations=g, max_new_tokens=4, temperature=temperature, eos_token_ids=(1,),
                              pad_token_id=0, decode_steps_per_check=1)
    ids = jax.ShapeDtypeStruct((prompts, 8), jnp.int32)
    compiled = _generate_jit.lower(model, sampling, param_shapes(model), ids, ids, jax.random.key(0)).compile()
    one_array = prompts * g * vocab * 4
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert arrays * one_array <= temp < (arrays + 0.1) * one_array
    w = table.dataclasses.replace(table.WORKLOAD, prompts=prompts, group=g)
    assert table.estimate(config, "data:1", 1, w).sampler_temps == 3 * one_array
