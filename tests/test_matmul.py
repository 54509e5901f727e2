"""grpo_jax.matmul.dense: the values of ``x @ kernel`` for any leading shape, and the backward pass that
made it worth having (no transposed copy of the activation gradient on the CPU)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.matmul import dense


@pytest.mark.parametrize("lead", [(7,), (3, 5), (2, 3, 4), (4, 1)])
def test_dense_equals_a_numpy_matmul_for_any_leading_shape(lead):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(*lead, 6)).astype(np.float32)
    kernel = rng.normal(size=(6, 9)).astype(np.float32)
    out = dense(jnp.asarray(x), jnp.asarray(kernel))
    assert out.shape == (*lead, 9) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.einsum("...d,df->...f", x.astype(np.float64), kernel),
                               rtol=1e-5, atol=1e-5)


def test_dense_passes_dot_options_and_has_the_matmul_gradient():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(4, 5)), jnp.bfloat16)
    assert dense(x, kernel, preferred_element_type=jnp.float32).dtype == jnp.float32
    x32, k32 = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 3, 4), (4, 5)))
    ours = jax.grad(lambda x, k: jnp.sum(jnp.sin(dense(x, k))), argnums=(0, 1))(x32, k32)
    plain = jax.grad(lambda x, k: jnp.sum(jnp.sin(jnp.einsum("btd,df->btf", x, k))), argnums=(0, 1))(x32, k32)
    for a, b in zip(ours, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_weight_gradient_needs_no_transposed_activation_gradient():
    """XLA's CPU layout choice, pinned by constraints.txt: the gradient of a SwiGLU block on [B, T, D]
    activations written as 3-D matmuls materialises [F, B*T]-shaped transposes of the activation gradient
    (strided, 2x the cost of the update on the GRPO benchmark); through ``dense`` it has none."""
    b, t, d, f = 128, 160, 384, 1024  # the benchmark's shapes: XLA's choice depends on them (compiled, not run)
    x = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    kernels = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in ((d, f), (d, f), (f, d)))

    def swiglu(matmul):
        def loss(ks, x):
            gate, up, down = ks
            return jnp.sum(matmul(jax.nn.silu(matmul(x, gate)) * matmul(x, up), down))
        return loss

    def transposed_gradients(matmul):
        hlo = jax.jit(jax.grad(swiglu(matmul))).lower(kernels, x).compile().as_text()
        return len(re.findall(rf"= f32\[{f},{b * t}\]", hlo)) + len(re.findall(rf"= f32\[{f},{b},{t}\]", hlo))

    assert transposed_gradients(lambda a, k: a @ k) > 0  # the layout this guards against still exists
    assert transposed_gradients(dense) == 0
