"""Statistical tests: sampled tokens follow softmax(logits / T), truncated correctly by top-k and top-p.

One prompt, G = 6000 completions of one token each: the first tokens are 6000 independent draws from
the same distribution. A chi-square goodness-of-fit test compares their counts with the expected ones
(bins with expected count < 5 are pooled) at significance level ALPHA = 0.001, with a fixed key, so the
test is deterministic; a correct sampler fails it for 1 key in 1000, a wrong distribution essentially
always (checked below by testing against a deliberately wrong temperature).
"""

import numpy as np
import pytest

pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from hf_checkpoints import make_checkpoint  # noqa: E402
from scipy import stats  # noqa: E402

from grpo_jax.models import forward, load_pretrained  # noqa: E402
from grpo_jax.sampling import SamplingConfig, generate  # noqa: E402

ALPHA = 1e-3
DRAWS = 6000
PROMPT = np.array([[17, 4, 60, 33]], np.int32)


@pytest.fixture(scope="module")
def model_and_logits(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    make_checkpoint(path, "llama_gqa2_untied", seed=3)
    model, params = load_pretrained(path)
    logits = np.asarray(forward(model, params, jnp.asarray(PROMPT), jnp.ones_like(jnp.asarray(PROMPT))))[0, -1]
    return model, params, logits.astype(np.float64)


def _draw(model, params, **options):
    config = SamplingConfig(num_generations=DRAWS, max_new_tokens=1, batch_buckets=(1,), **options)
    result = generate(model, params, PROMPT, np.ones_like(PROMPT), jax.random.key(0), config)
    return np.bincount(np.asarray(result.tokens)[:, 0], minlength=96), result


def _p_value(counts, probs):
    expected = probs * counts.sum()
    assert np.all(counts[expected == 0] == 0), "a token with probability 0 was sampled"
    order = np.argsort(expected)
    small = order[np.cumsum(expected[order]) < 5]  # pool the rarest bins into one of expected >= 5
    keep = np.setdiff1d(np.flatnonzero(expected > 0), small)
    obs = np.append(counts[keep], counts[small].sum())
    exp = np.append(expected[keep], expected[small].sum())
    obs, exp = (obs, exp) if exp[-1] > 0 else (obs[:-1], exp[:-1])
    return stats.chisquare(obs, exp).pvalue


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_samples_follow_softmax_over_temperature(model_and_logits, temperature):
    model, params, logits = model_and_logits
    counts, _ = _draw(model, params, temperature=temperature)
    probs = _softmax(logits / temperature)
    assert (probs > 0.01).sum() > 10  # a spread-out distribution, not a near-deterministic one
    assert _p_value(counts, probs) > ALPHA
    # power: the same counts are rejected against a wrong temperature
    assert _p_value(counts, _softmax(logits / (temperature * 1.25))) < ALPHA


def test_top_k_truncates_and_renormalises(model_and_logits):
    model, params, logits = model_and_logits
    counts, result = _draw(model, params, top_k=5, temperature=1.2)
    top5 = np.argsort(logits)[-5:]
    assert set(np.flatnonzero(counts)) <= set(top5)
    probs = np.zeros_like(logits)
    probs[top5] = _softmax(logits[top5] / 1.2)
    assert _p_value(counts, probs) > ALPHA
    # the returned logprob is of the truncated distribution; policy_logprobs of the full one
    token = int(np.asarray(result.tokens)[0, 0])
    assert float(result.logprobs[0, 0]) == pytest.approx(np.log(probs[token]), abs=1e-5)
    assert float(result.policy_logprobs[0, 0]) == pytest.approx(np.log(_softmax(logits / 1.2)[token]), abs=1e-5)


def test_top_p_keeps_the_nucleus(model_and_logits):
    model, params, logits = model_and_logits
    top_p = 0.6
    counts, _ = _draw(model, params, top_p=top_p)
    full = _softmax(logits)
    order = np.argsort(-full)
    mass_before = np.cumsum(full[order]) - full[order]
    nucleus = order[mass_before < top_p]  # smallest prefix whose mass reaches top_p
    assert 2 < len(nucleus) < 90
    assert set(np.flatnonzero(counts)) <= set(nucleus)
    probs = np.zeros_like(full)
    probs[nucleus] = full[nucleus] / full[nucleus].sum()
    assert _p_value(counts, probs) > ALPHA
