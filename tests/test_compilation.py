"""grpo_jax.compilation: compiles counted from JAX's own compile events, never from traced code.

What counts: a backend compile of a jitted function, an executable loaded from the persistent compilation
cache included (test_a_persistent_cache_hit_is_counted). What does not: tracing without compiling, and a
call served by jit's in-memory caches.
"""

import functools
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import compilation

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_event_is_jaxs_backend_compile_event():
    from jax._src import dispatch

    assert compilation.BACKEND_COMPILE_EVENT == dispatch.BACKEND_COMPILE_EVENT


def test_a_new_shape_counts_one_compile_and_a_cached_call_none():
    name = "test_compilation_shapes"

    @compilation.named(name)
    def program(x):
        return jnp.sin(x) * 2.0

    jitted = jax.jit(program)
    assert compilation.count(name) == 0 and program.__name__ == program.__qualname__ == name
    jitted(jnp.ones(3))
    assert compilation.count(name) == 1
    jitted(jnp.ones(3))
    jax.jit(program)(jnp.ones(3))  # a fresh jit of the same function: jit's in-memory caches serve it
    assert compilation.count(name) == 1
    x = jnp.ones(5)
    jax.make_jaxpr(program)(x)  # traced, never compiled
    jax.eval_shape(jitted, x)
    jitted.trace(x).lower()
    assert compilation.count(name) == 1
    jitted(x)  # a new shape
    assert compilation.count(name) == 2 and compilation.counts()[name] == 2


def test_a_partial_counts_under_the_function_it_wraps_and_install_is_idempotent():
    name = "test_compilation_partial"

    @compilation.named(name)
    def program(x, scale):
        return x * scale

    compilation.install()
    compilation.install()  # still one listener: one compile counts once
    jax.jit(functools.partial(program, scale=3.0))(jnp.ones(4))
    assert compilation.count(name) == 1
    jax.jit(functools.partial(program, scale=4.0))(jnp.ones(4))  # another program (the constant differs)
    assert compilation.count(name) == 2


def test_the_training_programs_are_counted_by_name():
    import optax

    from grpo_jax.models import ModelConfig, build_model, init_params
    from grpo_jax.sharding import make_mesh
    from grpo_jax.trainer.state import create_state, state_shardings
    from grpo_jax.trainer.step import compile_counts, make_logprobs_fn, make_update_fn, sft_objective

    config = ModelConfig(model_type="qwen2", vocab_size=24, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model = build_model(config, mesh)
    params = init_params(model, jax.random.key(0), mesh)
    optimizer = optax.sgd(1e-2)
    state = create_state(params, optimizer, mesh, seed=0, with_reference=False)
    update = make_update_fn(model, optimizer, optax.constant_schedule(1e-2), mesh, state_shardings(state),
                            objective=sft_objective, temperature=1.0, accumulation_steps=1, token_weighted=True,
                            name="sft_update")
    logprobs = make_logprobs_fn(model, mesh, temperature=1.0)
    ids = np.arange(2 * 7, dtype=np.int32).reshape(2, 7) % config.vocab_size
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "completion_mask": np.ones((2, 3), np.float32)}
    before = compile_counts()
    assert set(before) == {"logprobs", "values", "grpo_update", "critic_update", "sft_update"}
    for _ in range(2):  # the second round: the same programs, nothing compiles
        logprobs(state.params, ids, batch["attention_mask"], 3)
        state, _ = update(state, batch)
        after = compile_counts()
        assert {k: after[k] - before[k] for k in after} == {"logprobs": 1, "values": 0, "grpo_update": 0,
                                                            "critic_update": 0, "sft_update": 1}


def test_a_persistent_cache_hit_is_counted(tmp_path):
    """Two processes run one program with a shared persistent compilation cache: the second loads it from
    the cache (JAX reports a cache hit) and that load is counted as a compile, as the first's compile is."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from grpo_jax import compilation

        hits = []
        jax.monitoring.register_event_listener(
            lambda event, **kwargs: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)

        @compilation.named("test_compilation_persisted")
        def program(x):
            return jnp.cos(x @ x.T).sum()

        jax.block_until_ready(jax.jit(program)(np.ones((8, 8), np.float32)))  # the only compile of the run
        print(compilation.count("test_compilation_persisted"), len(hits))
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    (compiles, hits), (cached_compiles, cached_hits) = (map(int, run.stdout.split()[-2:]) for run in runs)
    assert (compiles, hits) == (1, 0)  # compiled, and written to the cache
    assert (cached_compiles, cached_hits) == (1, 1)  # loaded from the cache, and still counted
