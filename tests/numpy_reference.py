"""Independent plain-NumPy (float64) reference implementation of the grpo_jax loss API.

Written from the written specification only, not from the library source, so that the tests in
``test_against_numpy.py`` compare two independent derivations.  Clarity over speed: explicit
per-group / per-sequence / per-token Python loops, everything in float64.

Layout: N = B * G rows, group-contiguous (row ``i * G + j`` is completion ``j`` of prompt ``i``).
"""

from __future__ import annotations

import math

import numpy as np

LOG_RATIO_CLIP = 20.0  # both the policy log-ratio and the KL log-ratio are clipped to [-20, 20]


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _std_ddof1(values):
    """Unbiased sample standard deviation (ddof=1) by explicit sums."""
    values = list(values)
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


# ----------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------


def ref_group_advantages(rewards, group_size, *, scale="group", eps=1e-6):
    """Outcome advantages [N]: reward minus its group mean, optionally divided by a std."""
    r = _f64(rewards)
    n = r.shape[0]
    assert n % group_size == 0
    out = np.zeros(n, dtype=np.float64)
    batch_std = _std_ddof1(r) if scale == "batch" else None
    for g in range(n // group_size):
        rows = range(g * group_size, (g + 1) * group_size)
        vals = [r[i] for i in rows]
        if all(v == vals[0] for v in vals):
            continue  # all-equal group: exactly zero advantage
        mean = sum(vals) / group_size
        if scale == "group":
            denom = _std_ddof1(vals) + eps
        elif scale == "batch":
            denom = batch_std + eps
        elif scale == "none":
            denom = 1.0
        else:
            raise ValueError(scale)
        for i in rows:
            out[i] = (r[i] - mean) / denom
    return out


def ref_process_advantages(step_rewards, step_end_positions, mask, group_size, *, eps=1e-6):
    """Process-supervision advantages [N, T].

    ``step_end_positions[n, s]`` is the index of the last token of step ``s`` of completion ``n``
    (-1 = padding, ignored).  Per group, all valid step rewards are pooled and normalised by the
    pooled mean and ddof=1 std (+ eps); fewer than 2 valid steps, or all equal -> all zeros.
    Token t's advantage is the sum of its own completion's normalised step rewards whose end
    position is >= t, times the mask.
    """
    sr = _f64(step_rewards)
    pos = np.asarray(step_end_positions)
    m = _f64(mask)
    n, s_max = sr.shape
    t_len = m.shape[1]
    out = np.zeros((n, t_len), dtype=np.float64)
    for g in range(n // group_size):
        rows = list(range(g * group_size, (g + 1) * group_size))
        # all valid steps of the group, pooled
        pooled = [sr[i, s] for i in rows for s in range(s_max) if pos[i, s] != -1]
        normalised = {}  # (row, step) -> normalised reward
        if len(pooled) >= 2 and not all(v == pooled[0] for v in pooled):
            mean = sum(pooled) / len(pooled)
            std = _std_ddof1(pooled)
            for i in rows:
                for s in range(s_max):
                    if pos[i, s] != -1:
                        normalised[(i, s)] = (sr[i, s] - mean) / (std + eps)
        else:
            for i in rows:
                for s in range(s_max):
                    if pos[i, s] != -1:
                        normalised[(i, s)] = 0.0
        for i in rows:
            for t in range(t_len):
                total = 0.0
                for s in range(s_max):
                    if pos[i, s] != -1 and pos[i, s] >= t:
                        total += normalised[(i, s)]
                out[i, t] = total * m[i, t]
    return out


# ----------------------------------------------------------------------------------------------
# Log-probabilities
# ----------------------------------------------------------------------------------------------


def ref_token_logprobs(logits, tokens, *, temperature=1.0):
    """log_softmax(logits / temperature)[token], per (b, t)."""
    x = _f64(logits) / float(temperature)
    tok = np.asarray(tokens)
    b_len, t_len, _ = x.shape
    out = np.zeros((b_len, t_len), dtype=np.float64)
    for b in range(b_len):
        for t in range(t_len):
            row = x[b, t]
            mx = row.max()
            lse = mx + math.log(np.sum(np.exp(row - mx)))
            out[b, t] = row[tok[b, t]] - lse
    return out


def ref_token_logprobs_from_hidden(hidden, unembedding, tokens, *, temperature=1.0):
    """Same values as ref_token_logprobs(hidden @ unembedding, tokens) (no chunking needed)."""
    logits = np.einsum("btd,dv->btv", _f64(hidden), _f64(unembedding))
    return ref_token_logprobs(logits, tokens, temperature=temperature)


# ----------------------------------------------------------------------------------------------
# KL, aggregation, objective
# ----------------------------------------------------------------------------------------------


def ref_kl(logprobs, ref_logprobs, *, estimator="k3"):
    """Per-token KL estimate with d = clip(ref - logp, -20, 20)."""
    lp = _f64(logprobs)
    rf = _f64(ref_logprobs)
    out = np.zeros(lp.shape, dtype=np.float64)
    for idx in np.ndindex(lp.shape):
        d = min(max(rf[idx] - lp[idx], -LOG_RATIO_CLIP), LOG_RATIO_CLIP)
        if estimator == "k1":
            out[idx] = -d
        elif estimator == "k2":
            out[idx] = 0.5 * d * d
        elif estimator == "k3":
            out[idx] = math.expm1(d) - d  # == exp(d) - d - 1, without cancellation
        else:
            raise ValueError(estimator)
    return out


def ref_aggregate(per_token_loss, mask, *, aggregation="seq-mean-token-mean", max_tokens=None):
    """Reduce a [N, T] per-token loss to a scalar under the given aggregation mode."""
    x = _f64(per_token_loss)
    m = _f64(mask)
    n, t_len = x.shape
    seq_sums = []
    seq_counts = []
    for i in range(n):
        s = 0.0
        c = 0.0
        for t in range(t_len):
            s += x[i, t] * m[i, t]
            c += m[i, t]
        seq_sums.append(s)
        seq_counts.append(c)
    if aggregation == "seq-mean-token-mean":
        return sum(s / max(c, 1.0) for s, c in zip(seq_sums, seq_counts, strict=True)) / n
    if aggregation == "token-mean":
        return sum(seq_sums) / max(sum(seq_counts), 1.0)
    if aggregation == "seq-mean-token-sum":
        return sum(seq_sums) / n
    if aggregation == "seq-mean-token-sum-norm":
        length = t_len if max_tokens is None else max_tokens
        return sum(seq_sums) / (n * length)
    raise ValueError(aggregation)


def _masked_token_mean(x, m):
    return float(np.sum(x * m) / max(float(np.sum(m)), 1.0))


def ref_grpo_loss(
    logprobs,
    old_logprobs,
    ref_logprobs,
    advantages,
    mask,
    *,
    clip_eps=0.2,
    clip_eps_high=None,
    beta=0.04,
    kl_estimator="k3",
    ratio_level="token",
    aggregation="seq-mean-token-mean",
    max_tokens=None,
):
    """Clipped-surrogate GRPO loss plus KL penalty; returns (loss, metrics dict)."""
    lp = _f64(logprobs)
    old = lp.copy() if old_logprobs is None else _f64(old_logprobs)
    adv = _f64(advantages)
    m = _f64(mask)
    n, t_len = lp.shape
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high

    # per-token advantage
    a_tok = np.zeros((n, t_len), dtype=np.float64)
    for i in range(n):
        for t in range(t_len):
            a_tok[i, t] = adv[i] if adv.ndim == 1 else adv[i, t]

    # clipped log-ratio
    log_ratio = np.zeros((n, t_len), dtype=np.float64)
    for i in range(n):
        for t in range(t_len):
            log_ratio[i, t] = min(max(lp[i, t] - old[i, t], -LOG_RATIO_CLIP), LOG_RATIO_CLIP)

    ratio = np.zeros((n, t_len), dtype=np.float64)
    if ratio_level == "token":
        for i in range(n):
            for t in range(t_len):
                ratio[i, t] = math.exp(log_ratio[i, t])
    elif ratio_level == "sequence":
        for i in range(n):
            total = 0.0
            count = 0.0
            for t in range(t_len):
                if m[i, t] != 0:
                    total += log_ratio[i, t] * m[i, t]
                count += m[i, t]
            s_i = math.exp(total / max(count, 1.0))  # fully masked row: exp(0) = 1
            for t in range(t_len):
                ratio[i, t] = s_i
    else:
        raise ValueError(ratio_level)

    policy = np.zeros((n, t_len), dtype=np.float64)
    low_hit = np.zeros((n, t_len), dtype=np.float64)
    high_hit = np.zeros((n, t_len), dtype=np.float64)
    for i in range(n):
        for t in range(t_len):
            r = ratio[i, t]
            a = a_tok[i, t]
            clipped = min(max(r, 1.0 - clip_eps), 1.0 + eps_high)
            policy[i, t] = -min(r * a, clipped * a)
            low_hit[i, t] = 1.0 if (r < 1.0 - clip_eps and a < 0) else 0.0
            high_hit[i, t] = 1.0 if (r > 1.0 + eps_high and a > 0) else 0.0

    if ref_logprobs is None:
        kl = np.zeros((n, t_len), dtype=np.float64)
    else:
        kl = ref_kl(lp, ref_logprobs, estimator=kl_estimator)

    per_token = policy + beta * kl
    loss = ref_aggregate(per_token, m, aggregation=aggregation, max_tokens=max_tokens)

    unmasked = [ratio[i, t] for i in range(n) for t in range(t_len) if m[i, t] != 0]
    if adv.ndim == 1:
        adv_mean = float(np.mean(adv))
    else:
        adv_mean = _masked_token_mean(adv, m)
    clip_low = _masked_token_mean(low_hit, m)
    clip_high = _masked_token_mean(high_hit, m)
    metrics = {
        "loss": loss,
        "policy_loss": ref_aggregate(policy, m, aggregation=aggregation, max_tokens=max_tokens),
        "kl": _masked_token_mean(kl, m),
        "clip_frac_low": clip_low,
        "clip_frac_high": clip_high,
        "clip_frac": clip_low + clip_high,
        "ratio_mean": _masked_token_mean(ratio, m),
        "ratio_max": max(unmasked) if unmasked else 0.0,
        "ratio_min": min(unmasked) if unmasked else 0.0,
        "advantage_mean": adv_mean,
    }
    return loss, metrics
