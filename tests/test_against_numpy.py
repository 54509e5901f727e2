"""grpo_jax.losses against the independent float64 NumPy reference in numpy_reference.py.

All library inputs are float32 (ints for tokens / positions); the reference is fed the same float32
values and computes in float64.  Default tolerance is rtol=atol=1e-6; any looser tolerance is
justified where it is used.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy_reference import (
    ref_aggregate,
    ref_group_advantages,
    ref_grpo_loss,
    ref_kl,
    ref_process_advantages,
    ref_token_logprobs,
    ref_token_logprobs_from_hidden,
)

from grpo_jax.losses import (
    aggregate_loss,
    group_advantages,
    grpo_loss,
    kl_penalty,
    process_advantages,
    token_logprobs,
    token_logprobs_from_hidden,
)

RTOL = 1e-6
ATOL = 1e-6

B, G, T = 3, 4, 10
N = B * G

AGGREGATIONS = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
METRIC_KEYS = {
    "loss",
    "policy_loss",
    "kl",
    "clip_frac_low",
    "clip_frac_high",
    "clip_frac",
    "ratio_mean",
    "ratio_max",
    "ratio_min",
    "advantage_mean",
}


# ----------------------------------------------------------------------------------------------
# input helpers
# ----------------------------------------------------------------------------------------------


def _check(got, want, rtol=RTOL, atol=ATOL, err_msg=""):
    got = np.asarray(got)
    assert got.dtype == np.float32, f"{err_msg}: expected float32, got {got.dtype}"
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol, err_msg=err_msg)


def make_mask(rs, n=N, t=T, kind="prefix", zero_row=1):
    """float32 [n, t] 0/1 mask; "prefix": first L_i tokens valid (L_i in [1, t]); "random": iid.

    Row ``zero_row`` is all zeros (a fully masked completion).
    """
    if kind == "prefix":
        lengths = rs.randint(1, t + 1, size=n)
        mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    else:
        mask = (rs.rand(n, t) < 0.6).astype(np.float32)
    if zero_row is not None:
        mask[zero_row] = 0.0
    return mask


def make_logprobs(rs, n=N, t=T, noise=0.3):
    """(logprobs, old_logprobs, ref_logprobs), float32; old/ref = logprobs + N(0, noise) noise."""
    lp = -rs.exponential(1.0, size=(n, t)).astype(np.float32)
    old = (lp + noise * rs.randn(n, t)).astype(np.float32)
    ref = (lp + noise * rs.randn(n, t)).astype(np.float32)
    return lp, old, ref


def make_advantages(rs, kind, n=N, t=T):
    if kind == "seq":
        return rs.randn(n).astype(np.float32)
    # per-token values, deliberately nonzero at masked positions too (they must be ignored)
    return rs.randn(n, t).astype(np.float32)


def make_rewards(rs, n=N, g=G):
    """Rewards with a mix of groups: continuous, binary {0,1}, and one all-equal group."""
    r = rs.randn(n).astype(np.float32)
    r[g : 2 * g] = rs.randint(0, 2, size=g).astype(np.float32)
    r[g] = 0.0
    r[g + 1] = 1.0  # make sure the binary group is not all-equal
    r[2 * g : 3 * g] = np.float32(0.7)  # all-equal group -> exactly 0
    return r


# ----------------------------------------------------------------------------------------------
# group_advantages
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_advantages(scale, seed):
    rs = np.random.RandomState(seed)
    n = 4 * G
    rewards = make_rewards(rs, n=n)
    got = group_advantages(rewards, G, scale=scale)
    want = ref_group_advantages(rewards, G, scale=scale)
    assert np.shape(got) == (n,)
    _check(got, want, err_msg=f"scale={scale}")
    # the all-equal group is *exactly* zero, not merely close
    assert np.all(np.asarray(got)[2 * G : 3 * G] == 0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value", [0.0, 0.1, -3.7, 1e4])
def test_group_advantages_all_equal_is_exact_zero(scale, value):
    # every group (hence the whole batch) constant; 0.1 / -3.7 are not exactly representable,
    # so a naive float32 "r - mean" could leave a tiny nonzero residue
    rewards = np.full(3 * G, value, dtype=np.float32)
    got = np.asarray(group_advantages(rewards, G, scale=scale))
    assert got.dtype == np.float32
    assert np.all(got == 0.0), got
    np.testing.assert_array_equal(ref_group_advantages(rewards, G, scale=scale), 0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("group_size", [2, 3, 8])
def test_group_advantages_group_sizes(scale, group_size):
    rs = np.random.RandomState(10 + group_size)
    rewards = rs.randn(4 * group_size).astype(np.float32)
    _check(
        group_advantages(rewards, group_size, scale=scale),
        ref_group_advantages(rewards, group_size, scale=scale),
        err_msg=f"scale={scale} G={group_size}",
    )


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_group_advantages_eps(eps):
    rs = np.random.RandomState(3)
    rewards = make_rewards(rs)
    for scale in ("group", "batch"):
        _check(
            group_advantages(rewards, G, scale=scale, eps=eps),
            ref_group_advantages(rewards, G, scale=scale, eps=eps),
            err_msg=f"scale={scale} eps={eps}",
        )


# ----------------------------------------------------------------------------------------------
# process_advantages
# ----------------------------------------------------------------------------------------------


def make_steps(rs, mask, s_max=4, pad_anywhere=False):
    """Random step rewards / end positions consistent with a prefix mask.

    Per row, a random number of steps in [0, s_max] (0 with probability 0.2) with strictly increasing end
    positions inside the row's valid prefix (the last step usually ends at the last valid token); the rest is -1.
    """
    n, t = mask.shape
    rewards = rs.randn(n, s_max).astype(np.float32)
    pos = np.full((n, s_max), -1, dtype=np.int32)
    for i in range(n):
        length = int(mask[i].sum())
        if length == 0:
            continue
        if rs.rand() < 0.2:
            continue  # a completion with no step annotations at all
        k = rs.randint(1, min(s_max, length) + 1)
        ends = np.sort(rs.choice(length, size=k, replace=False))
        if rs.rand() < 0.7:
            ends[-1] = length - 1
            ends = np.unique(ends)
        pos[i, : len(ends)] = ends
    if pad_anywhere:
        for i in range(n):
            perm = rs.permutation(s_max)
            pos[i] = pos[i, perm]
            rewards[i] = rewards[i, perm]
    # garbage rewards at padded slots: must be ignored
    rewards[pos == -1] = 1e3
    return rewards, pos


def _process_case(seed, pad_anywhere=False):
    rs = np.random.RandomState(seed)
    mask = make_mask(rs, n=4 * G, kind="prefix", zero_row=1)
    rewards, pos = make_steps(rs, mask, pad_anywhere=pad_anywhere)
    # group 1: only one valid step in the whole group -> all zeros
    g = 1
    pos[g * G : (g + 1) * G] = -1
    length = int(mask[g * G].sum())
    pos[g * G, 0] = length - 1
    # group 2: several valid steps, all with equal reward -> all zeros
    g = 2
    rewards[g * G : (g + 1) * G] = np.where(pos[g * G : (g + 1) * G] != -1, np.float32(0.25), np.float32(1e3))
    return rewards, pos, mask


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("pad_anywhere", [False, True])
def test_process_advantages(seed, pad_anywhere):
    rewards, pos, mask = _process_case(seed, pad_anywhere)
    got = process_advantages(rewards, pos, mask, G)
    want = ref_process_advantages(rewards, pos, mask, G)
    assert np.shape(got) == (4 * G, T)
    _check(got, want, err_msg=f"seed={seed}")
    got = np.asarray(got)
    assert np.all(got[G : 3 * G] == 0.0)  # groups 1 and 2 are degenerate
    assert np.all(got[mask == 0] == 0.0)
    # non-vacuous: groups 0 and 3 have >= 2 distinct valid step rewards -> nonzero advantages
    for g in (0, 3):
        rows = slice(g * G, (g + 1) * G)
        assert (pos[rows] != -1).sum() >= 2, "test case generation should give this group 2+ steps"
        assert np.any(got[rows] != 0.0)


def test_process_advantages_hand_example():
    # one group of G=2, T=5; row 0 steps end at 1 and 4, row 1 one step ending at 2.
    rewards = np.array([[1.0, 0.0], [2.0, 9.0]], np.float32)
    pos = np.array([[1, 4], [2, -1]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.float32)
    pooled = np.array([1.0, 0.0, 2.0])
    z = (pooled - pooled.mean()) / (pooled.std(ddof=1) + 1e-6)
    want = np.array(
        [
            [z[0] + z[1], z[0] + z[1], z[1], z[1], z[1]],
            [z[2], z[2], z[2], 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(ref_process_advantages(rewards, pos, mask, 2), want, rtol=1e-12, atol=1e-12)
    _check(process_advantages(rewards, pos, mask, 2), want)


# ----------------------------------------------------------------------------------------------
# token log-probabilities
# ----------------------------------------------------------------------------------------------

V = 37


def _logits_case(seed, b=3, t=T, v=V):
    rs = np.random.RandomState(seed)
    logits = (3.0 * rs.randn(b, t, v)).astype(np.float32)
    tokens = rs.randint(0, v, size=(b, t)).astype(np.int32)
    return logits, tokens


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.9])
def test_token_logprobs(temperature):
    logits, tokens = _logits_case(0)
    got = token_logprobs(logits, tokens, temperature=temperature)
    want = ref_token_logprobs(logits, tokens, temperature=temperature)
    assert np.shape(got) == tokens.shape
    # float32 log-sum-exp over V=37 logits of magnitude ~10 (after /temperature): the logsumexp and
    # the subtraction each carry ~1 ulp of a value ~10-20 (~1e-6 each); observed max error 1.6e-6.
    _check(got, want, rtol=1e-6, atol=5e-6, err_msg=f"temperature={temperature}")


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, T, 7, 128])
def test_token_logprobs_from_hidden(chunk_size, temperature):
    rs = np.random.RandomState(5)
    b, d = 3, 16
    hidden = rs.randn(b, T, d).astype(np.float32)
    unemb = (0.5 * rs.randn(d, V)).astype(np.float32)
    tokens = rs.randint(0, V, size=(b, T)).astype(np.int32)
    got = token_logprobs_from_hidden(hidden, unemb, tokens, temperature=temperature, chunk_size=chunk_size)
    want = ref_token_logprobs_from_hidden(hidden, unemb, tokens, temperature=temperature)
    assert np.shape(got) == (b, T)
    # float32 matmul (D=16 products of magnitude ~1 accumulated) followed by a float32 log-softmax:
    # absolute error of ~1e-6 on values of magnitude ~5-10 (observed max 1.3e-6).
    _check(got, want, rtol=1e-6, atol=5e-6, err_msg=f"chunk={chunk_size} temp={temperature}")
    # and the same values (to float32 rounding) as the unfused path
    direct = token_logprobs(hidden @ unemb, tokens, temperature=temperature)
    np.testing.assert_allclose(np.asarray(got), np.asarray(direct), rtol=1e-6, atol=5e-6)


# ----------------------------------------------------------------------------------------------
# KL and aggregation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty(estimator):
    rs = np.random.RandomState(7)
    lp, _, ref = make_logprobs(rs)
    got = kl_penalty(lp, ref, estimator=estimator)
    want = ref_kl(lp, ref, estimator=estimator)
    assert np.shape(got) == lp.shape
    # k3 = exp(d) - d - 1 with |d| ~ 0.3: float32 cancellation leaves up to ~ulp(1) = 1.2e-7 absolute
    _check(got, want, err_msg=estimator)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty_clips_at_20(estimator):
    lp = np.array([[-30.0, -1.0, -50.0, -0.5, -25.0, -5.0]], np.float32)
    ref = np.array([[-1.0, -30.0, -0.5, -50.0, -5.0, -25.0]], np.float32)  # d = 29, -29, 49.5, -49.5, 20, -20
    got = kl_penalty(lp, ref, estimator=estimator)
    want = ref_kl(lp, ref, estimator=estimator)
    # values up to exp(20) ~ 4.9e8: only a relative comparison is meaningful; float32 exp carries
    # a couple of ulp (2.4e-7 relative) of error
    _check(got, want, rtol=1e-6, atol=1e-5, err_msg=estimator)
    assert np.all(np.isfinite(np.asarray(got)))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("max_tokens", [None, 2 * T])
@pytest.mark.parametrize("mask_kind", ["prefix", "random"])
def test_aggregate_loss(aggregation, max_tokens, mask_kind):
    rs = np.random.RandomState(11)
    x = rs.randn(N, T).astype(np.float32)
    mask = make_mask(rs, kind=mask_kind)
    got = aggregate_loss(x, mask, aggregation=aggregation, max_tokens=max_tokens)
    want = ref_aggregate(x, mask, aggregation=aggregation, max_tokens=max_tokens)
    assert np.shape(got) == ()
    _check(got, want, err_msg=aggregation)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_aggregate_loss_all_masked(aggregation):
    x = np.random.RandomState(12).randn(N, T).astype(np.float32)
    mask = np.zeros((N, T), np.float32)
    got = aggregate_loss(x, mask, aggregation=aggregation)
    assert float(ref_aggregate(x, mask, aggregation=aggregation)) == 0.0
    _check(got, 0.0, err_msg=aggregation)


# ----------------------------------------------------------------------------------------------
# grpo_loss
# ----------------------------------------------------------------------------------------------


def _compare_grpo(args, kwargs, rtol=RTOL, atol=ATOL):
    loss, metrics = grpo_loss(*args, **kwargs)
    want_loss, want_metrics = ref_grpo_loss(*args, **kwargs)
    assert set(metrics) == METRIC_KEYS
    assert set(want_metrics) == METRIC_KEYS
    assert np.shape(loss) == ()
    _check(loss, want_loss, rtol=rtol, atol=atol, err_msg=f"loss {kwargs}")
    for key in sorted(METRIC_KEYS):
        assert np.shape(metrics[key]) == (), key
        _check(metrics[key], want_metrics[key], rtol=rtol, atol=atol, err_msg=f"metric {key} {kwargs}")
    return loss, metrics, want_metrics


def _grpo_inputs(seed, adv_kind, old_none=False, ref_none=False, mask_kind="prefix", noise=0.3):
    rs = np.random.RandomState(seed)
    lp, old, ref = make_logprobs(rs, noise=noise)
    mask = make_mask(rs, kind=mask_kind)
    adv = make_advantages(rs, adv_kind)
    return (lp, None if old_none else old, None if ref_none else ref, adv, mask)


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("max_tokens", [None, 2 * T])
@pytest.mark.parametrize("adv_kind", ["seq", "token"])
@pytest.mark.parametrize("clip_eps_high", [None, 0.28])
@pytest.mark.parametrize("old_none", [False, True])
def test_grpo_loss_objective(ratio_level, aggregation, max_tokens, adv_kind, clip_eps_high, old_none):
    args = _grpo_inputs(100, adv_kind, old_none=old_none)
    kwargs = dict(
        clip_eps=0.2,
        clip_eps_high=clip_eps_high,
        beta=0.04,
        kl_estimator="k3",
        ratio_level=ratio_level,
        aggregation=aggregation,
        max_tokens=max_tokens,
    )
    _, metrics, _ = _compare_grpo(args, kwargs)
    if old_none:
        # ratio is exactly 1 everywhere: nothing clips
        assert float(metrics["clip_frac"]) == 0.0
        assert float(metrics["ratio_min"]) == 1.0 == float(metrics["ratio_max"])


# "no-ref" = ref_logprobs None; only with beta=0 (see test_grpo_loss_no_ref_with_beta)
KL_BETA = [(k, beta) for k in ("k1", "k2", "k3") for beta in (0.0, 0.04)] + [("no-ref", 0.0)]


@pytest.mark.parametrize("kl_estimator,beta", KL_BETA)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("adv_kind", ["seq", "token"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_grpo_loss_kl(kl_estimator, beta, ratio_level, adv_kind, aggregation):
    ref_none = kl_estimator == "no-ref"
    args = _grpo_inputs(200, adv_kind, ref_none=ref_none, mask_kind="random")
    kwargs = dict(
        clip_eps=0.2,
        clip_eps_high=0.28,
        beta=beta,
        ratio_level=ratio_level,
        aggregation=aggregation,
        max_tokens=None,
    )
    if not ref_none:
        kwargs["kl_estimator"] = kl_estimator
    _, metrics, _ = _compare_grpo(args, kwargs)
    if ref_none:
        assert float(metrics["kl"]) == 0.0
    if beta == 0.0:
        # KL does not enter the loss at all
        np.testing.assert_allclose(float(metrics["loss"]), float(metrics["policy_loss"]), rtol=0, atol=0)


def test_grpo_loss_no_ref_with_beta():
    # The written spec says only "kl_t = 0 everywhere if ref is None", which would make beta inert;
    # the library instead rejects ref_logprobs=None together with beta > 0 as a likely caller
    # mistake.  This pins that (stricter-than-spec) behaviour; with beta=0 the no-ref path is
    # compared against the reference in test_grpo_loss_kl[...-no-ref].
    args = _grpo_inputs(201, "seq", ref_none=True)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(*args, beta=0.04)


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("clip_eps_high", [None, 0.28])
def test_grpo_loss_clipping_is_exercised(ratio_level, clip_eps_high):
    # Sequence-level ratios average the noise over ~T tokens, so they need a bigger per-token shift
    # to leave the trust region; 0.3 already suffices for token-level ratios.
    noise = 0.3 if ratio_level == "token" else 1.0
    args = _grpo_inputs(300, "seq", noise=noise)
    kwargs = dict(clip_eps=0.2, clip_eps_high=clip_eps_high, beta=0.04, ratio_level=ratio_level)
    _, metrics, want = _compare_grpo(args, kwargs)
    # non-vacuous: both clipping directions really happen, in the library and in the reference
    assert want["clip_frac_low"] > 0 and want["clip_frac_high"] > 0
    assert float(metrics["clip_frac_low"]) > 0 and float(metrics["clip_frac_high"]) > 0
    assert want["clip_frac"] < 1.0


def test_grpo_loss_clip_eps_high_changes_result():
    # asymmetric clipping (DAPO clip-higher) must actually move clip_frac_high and the loss
    args = _grpo_inputs(301, "seq")
    _, m_sym, _ = _compare_grpo(args, dict(clip_eps_high=None))
    _, m_asym, _ = _compare_grpo(args, dict(clip_eps_high=0.28))
    assert float(m_asym["clip_frac_high"]) < float(m_sym["clip_frac_high"])
    assert float(m_asym["clip_frac_low"]) == float(m_sym["clip_frac_low"])


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("adv_kind", ["seq", "token"])
def test_grpo_loss_extreme_log_ratios(ratio_level, adv_kind):
    # log-ratios beyond +-20 are clipped to +-20 before exp; ratios span exp(-20)..exp(20), so the
    # loss and ratio_max are ~1e8: compare relatively (a few float32 ulp in exp and the sums).
    rs = np.random.RandomState(400)
    lp, old, ref = make_logprobs(rs)
    old = old.copy()
    ref = ref.copy()
    old[0, 0] = lp[0, 0] + 40.0  # log-ratio -40 -> -20
    old[2, 3] = lp[2, 3] - 35.0  # log-ratio +35 -> +20
    ref[3, 1] = lp[3, 1] + 60.0  # KL d = 60 -> 20
    mask = make_mask(rs, kind="prefix")
    mask[0, 0] = mask[2, 3] = mask[3, 1] = 1.0
    adv = make_advantages(rs, adv_kind)
    for aggregation in AGGREGATIONS:
        kwargs = dict(ratio_level=ratio_level, aggregation=aggregation, kl_estimator="k3", beta=0.04)
        loss, _, _ = _compare_grpo((lp, old, ref, adv, mask), kwargs, rtol=2e-6, atol=1e-5)
        assert np.isfinite(float(loss))


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("adv_kind", ["seq", "token"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_grpo_loss_all_masked(ratio_level, adv_kind, aggregation):
    rs = np.random.RandomState(500)
    lp, old, ref = make_logprobs(rs)
    adv = make_advantages(rs, adv_kind)
    mask = np.zeros((N, T), np.float32)
    _, metrics, _ = _compare_grpo((lp, old, ref, adv, mask), dict(ratio_level=ratio_level, aggregation=aggregation))
    for key in ("loss", "policy_loss", "kl", "clip_frac", "ratio_mean", "ratio_max", "ratio_min"):
        assert float(metrics[key]) == 0.0, key


def test_grpo_loss_sequence_ratio_is_per_sequence_constant():
    # GSPO: every token of a row shares s_i; when a row's log-ratio is constant c over its tokens,
    # s_i = exp(c) equals the token-level ratio (up to float32 rounding of lp - old), so both
    # ratio levels must agree.
    rs = np.random.RandomState(600)
    lp = -rs.exponential(1.0, size=(N, T)).astype(np.float32)
    shift = (0.4 * rs.randn(N, 1)).astype(np.float32)
    old = (lp - shift).astype(np.float32)
    mask = make_mask(rs)
    adv = make_advantages(rs, "seq")
    _, m_tok, _ = _compare_grpo((lp, old, None, adv, mask), dict(ratio_level="token", beta=0.0))
    _, m_seq, _ = _compare_grpo((lp, old, None, adv, mask), dict(ratio_level="sequence", beta=0.0))
    for key in ("loss", "ratio_mean", "ratio_max", "ratio_min", "clip_frac"):
        np.testing.assert_allclose(float(m_seq[key]), float(m_tok[key]), rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(m_seq["loss"]))
