"""grpo_jax.sampling: exactness against full forwards and transformers, determinism, sharding, compiles."""

import dataclasses
import re

import numpy as np
import pytest

pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from hf_checkpoints import make_checkpoint  # noqa: E402
from jax.extend import core as jax_core  # noqa: E402

from grpo_jax.distributed import global_rows  # noqa: E402
from grpo_jax.losses import token_logprobs  # noqa: E402
from grpo_jax.models import forward, load_pretrained  # noqa: E402
from grpo_jax.sampling import (  # noqa: E402
    SamplingConfig,
    _generate_jit,
    _generate_program,
    bucket_size,
    compile_count,
    generate,
    inverse_cdf,
    params_in_compute_dtype,
    sample_logits,
    steps_per_check_for,
)
from grpo_jax.sharding import logical_sharding, make_mesh  # noqa: E402

VOCAB = 96


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    return path, make_checkpoint(path, "qwen2_bias_tied")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_pretrained(checkpoint[0])


def _prompts(seed=0, lengths=(5, 9, 2), width=9):
    rng = np.random.RandomState(seed)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = rng.randint(1, VOCAB, n)
        mask[i, width - n:] = 1
    return ids, mask


def _full_sequence_logits(model, params, ids, mask, result, g):
    full_ids = np.concatenate([np.repeat(ids, g, 0), np.asarray(result.tokens)], axis=1)
    full_mask = np.concatenate([np.repeat(mask, g, 0), np.asarray(result.mask)], axis=1)
    logits = np.asarray(forward(model, params, jnp.asarray(full_ids), jnp.asarray(full_mask)))
    p = ids.shape[1]
    return logits[:, p - 1:-1], full_ids[:, p:]  # logits predicting each completion token


def test_greedy_equals_stepwise_argmax_of_full_forward(loaded):
    model, params = loaded
    ids, mask = _prompts()
    result = generate(model, params, ids, mask, jax.random.key(0),
                      SamplingConfig(num_generations=2, max_new_tokens=10, greedy=True))
    logits, tokens = _full_sequence_logits(model, params, ids, mask, result, 2)
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))
    assert np.all(np.asarray(result.mask) == 1) and not np.any(np.asarray(result.finished))
    # greedy rows of the same prompt are identical
    np.testing.assert_array_equal(np.asarray(result.tokens)[0::2], np.asarray(result.tokens)[1::2])


@pytest.mark.parametrize("phase", [256, 5])  # one phase; a cache grown by 5 slots at a time (5, 10, 12)
def test_greedy_equals_transformers_generate(checkpoint, loaded, phase):
    import torch

    _, torch_model = checkpoint
    model, params = loaded
    ids, mask = _prompts(1)
    result = generate(model, params, ids, mask, jax.random.key(0),
                      SamplingConfig(num_generations=1, max_new_tokens=12, greedy=True, decode_phase_tokens=phase))
    for i in range(ids.shape[0]):
        prompt = torch.as_tensor(ids[i][mask[i] == 1][None], dtype=torch.long)
        with torch.no_grad():
            out = torch_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                       max_new_tokens=12, min_new_tokens=12, eos_token_id=None, pad_token_id=0)
        np.testing.assert_array_equal(np.asarray(result.tokens)[i], out[0, prompt.shape[1]:].numpy())


@pytest.mark.parametrize("temperature, phase", [(1.0, 256), (0.6, 256), (1.0, 3)])
def test_logprobs_equal_token_logprobs_on_the_full_sequence(loaded, temperature, phase):
    model, params = loaded
    ids, mask = _prompts(2)
    g = 4
    result = generate(model, params, ids, mask, jax.random.key(1),
                      SamplingConfig(num_generations=g, max_new_tokens=10, temperature=temperature,
                                     eos_token_ids=(7, 11), decode_phase_tokens=phase))
    logits, tokens = _full_sequence_logits(model, params, ids, mask, result, g)
    expected = np.asarray(token_logprobs(jnp.asarray(logits), jnp.asarray(tokens), temperature=temperature))
    m = np.asarray(result.mask)
    np.testing.assert_allclose(np.asarray(result.logprobs) * m, expected * m, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.asarray(result.logprobs), np.asarray(result.policy_logprobs))
    assert np.all(np.asarray(result.logprobs)[m == 0] == 0)


def test_eos_ends_a_completion_and_is_kept(loaded):
    model, params = loaded
    ids, mask = _prompts(3)
    stop = tuple(range(0, VOCAB, 4))  # a quarter of the vocabulary stops: most rows end early
    config = SamplingConfig(num_generations=4, max_new_tokens=20, eos_token_ids=stop, pad_token_id=1)
    result = generate(model, params, ids, mask, jax.random.key(2), config)
    tokens, m, finished = np.asarray(result.tokens), np.asarray(result.mask), np.asarray(result.finished)
    assert finished.any()
    for row in range(tokens.shape[0]):
        length = m[row].sum()
        assert np.all(m[row, :length] == 1) and np.all(m[row, length:] == 0)
        ended = np.isin(tokens[row, :length], stop)
        assert finished[row] == ended.any()
        if finished[row]:
            assert ended[-1] and not ended[:-1].any()  # the stop token is the last one kept
            assert np.all(tokens[row, length:] == 1)  # pad after the end
    # every row stopping on its first token ends the loop after one step
    everything_stops = SamplingConfig(num_generations=2, max_new_tokens=20, eos_token_ids=tuple(range(VOCAB)))
    early = generate(model, params, ids, mask, jax.random.key(3), everything_stops)
    assert int(early.decode_steps) == 1 and np.asarray(early.mask)[:, 1:].sum() == 0


def test_rows_of_bucket_padding_do_not_keep_the_loop_running(loaded):
    """3 prompts run as a bucket of 4 rows. Greedy decoding, with each real row's first token a stop token: the
    loop ends after one step. The padding row has no prompt; had it decoded, it would not have stopped."""
    model, params = loaded
    ids, mask = _prompts(3)
    config = SamplingConfig(num_generations=2, max_new_tokens=12, greedy=True, batch_buckets=(4,),
                            decode_steps_per_check=1)
    first = np.asarray(generate(model, params, ids, mask, jax.random.key(0), config).tokens)[:, 0]
    stopping = dataclasses.replace(config, eos_token_ids=tuple(int(t) for t in set(first)))
    early = generate(model, params, ids, mask, jax.random.key(0), stopping)
    assert int(early.decode_steps) == 1 and np.asarray(early.finished).all()
    np.testing.assert_array_equal(np.asarray(early.tokens)[:, 0], first)


def test_token_ids_outside_the_vocabulary_are_refused(loaded):
    """Under jit an out-of-range id embeds as NaN, and the NaN reaches every row through the masked slots."""
    model, params = loaded
    ids, mask = _prompts(3)
    with pytest.raises(ValueError, match=rf"`pad_token_id` {VOCAB} is not a token id of the model"):
        generate(model, params, ids, mask, jax.random.key(0), SamplingConfig(pad_token_id=VOCAB))
    bad = np.asarray(ids).copy()
    bad[0, 0] = VOCAB + 3  # a padding position: still embedded
    with pytest.raises(ValueError, match=rf"must lie in \[0, vocab_size={VOCAB}\), got values in \[0, {VOCAB + 3}\]"):
        generate(model, params, bad, mask, jax.random.key(0), SamplingConfig())


def test_top_k_one_equals_greedy_and_keys_are_deterministic(loaded):
    model, params = loaded
    ids, mask = _prompts(4)
    greedy = generate(model, params, ids, mask, jax.random.key(0),
                      SamplingConfig(num_generations=3, max_new_tokens=8, greedy=True))
    top1 = generate(model, params, ids, mask, jax.random.key(5),
                    SamplingConfig(num_generations=3, max_new_tokens=8, top_k=1, temperature=1.3))
    np.testing.assert_array_equal(np.asarray(top1.tokens), np.asarray(greedy.tokens))
    assert np.all(np.asarray(top1.logprobs) == 0.0)  # a point mass: the sampled distribution has prob 1
    config = SamplingConfig(num_generations=3, max_new_tokens=8)
    a = generate(model, params, ids, mask, jax.random.key(7), config)
    b = generate(model, params, ids, mask, jax.random.key(7), config)
    c = generate(model, params, ids, mask, jax.random.key(8), config)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def _all_gathers_in_loops(hlo_text: str) -> int:
    """All-gathers of the model's tensors in the bodies of the compiled program's while loops (the decode
    steps); gathers of the sampling's vocabulary-sharded sums are not counted."""
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo_text))
    count, current = 0, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head:
            current = head.group(1)
        elif (current in bodies and re.search(r"\sall-gather(-start)?\(", line)
              and re.search(r"body/(closed_call/)?Transformer/", line)):  # closed_call: the steps' inner loop
            count += 1
    return count


@pytest.mark.parametrize("axes, gather", [({"data": 8}, True), ({"fsdp": 4, "tensor": 2}, True),
                                          ({"fsdp": 4, "tensor": 2}, False)])
def test_mesh_gives_the_same_output_as_one_device(checkpoint, loaded, axes, gather):
    """Also: the weights are gathered once per call (no all-gather inside the decode loops) or, with
    gather_params_once=False, inside every decode step (there checking for the end every 2 steps); the
    tokens are the same."""
    model, params = loaded
    sharded_model, sharded_params = load_pretrained(checkpoint[0], mesh=make_mesh(axes))
    ids, mask = _prompts(5, lengths=(3, 7, 5, 1, 6, 2, 4, 7), width=7)
    config = SamplingConfig(num_generations=2, max_new_tokens=6, temperature=0.9, eos_token_ids=(5,),
                            decode_phase_tokens=4,  # the cache grows once, resharded as it grows
                            gather_params_once=gather)
    single = generate(model, params, ids, mask, jax.random.key(9), config)
    if not gather:
        config = dataclasses.replace(config, decode_steps_per_check=2)
    sharded = generate(sharded_model, sharded_params, ids, mask, jax.random.key(9), config)
    np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(single.tokens))
    np.testing.assert_allclose(np.asarray(sharded.logprobs), np.asarray(single.logprobs), atol=1e-5)
    if "fsdp" in axes:
        rules = sharded_model.mesh_rules
        shape = (bucket_size(ids.shape[0], config.batch_buckets),
                 bucket_size(ids.shape[1], config.prompt_length_buckets))
        padded = [global_rows(np.ones(shape, np.int32), logical_sharding(("batch", "length"), shape, rules.mesh,
                                                                         rules.rules)) for _ in range(2)]
        hlo = _generate_jit.lower(sharded_model, config, sharded_params, *padded, jax.random.key(9)).compile()
        gathers = _all_gathers_in_loops(hlo.as_text())
        # gathered per step: at least each layer's seven weight matrices
        assert (gathers == 0) if gather else (gathers >= 7 * sharded_model.config.num_hidden_layers), gathers


def _hidden_state_shapes(jaxpr, hidden_size: int) -> set[tuple[bool, tuple[int, ...]]]:
    """(inside a while loop, shape) of every [rows, positions, hidden_size] array with rows > 1 that the
    program computes, sub-programs (jit, remat, loops' bodies) included: the model's activations."""
    found = set()

    def walk(jaxpr, in_loop):
        for eqn in jaxpr.eqns:
            loop = in_loop or eqn.primitive.name == "while"
            found.update((loop, v.aval.shape) for v in eqn.outvars if getattr(v.aval, "ndim", 0) == 3
                         and v.aval.shape[2] == hidden_size and v.aval.shape[0] > 1)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(sub, (jax_core.ClosedJaxpr, jax_core.Jaxpr)):
                        walk(getattr(sub, "jaxpr", sub), loop)

    walk(jaxpr.jaxpr, False)
    return found


def test_prefill_sees_b_rows_and_compiles_are_bounded_by_buckets(loaded):
    model, params = loaded
    config = SamplingConfig(num_generations=3, max_new_tokens=4, prompt_length_buckets=(8, 16, 32),
                            batch_buckets=(4,))
    rng = np.random.RandomState(11)
    before = compile_count()
    buckets_used = set()
    for _ in range(50):
        length = int(rng.randint(1, 33))
        ids, mask = _prompts(int(rng.randint(1000)), lengths=(length, max(1, length // 2)), width=length)
        generate(model, params, ids, mask, jax.random.key(0), config)
        buckets_used.add(bucket_size(length, config.prompt_length_buckets))
    # one compile per prompt bucket (a new config: none compiled before), however many calls
    assert compile_count() - before == len(buckets_used) <= 3
    hidden = model.config.hidden_size
    for width in buckets_used:  # the programs generate ran (batch bucket 4): prefill on B rows, decode on B * G
        padded = (np.zeros((4, width), np.int32), np.ones((4, width), np.int32), jax.random.key(0))
        jaxpr = jax.make_jaxpr(_generate_program, static_argnums=(0, 1))(model, config, params, *padded)
        shapes = _hidden_state_shapes(jaxpr, hidden)
        assert {(loop, s) for loop, s in shapes if s[1] == width} == {(False, (4, width, hidden))}  # the prefill
        assert {s for loop, s in shapes if loop and s[1] == 1} == {(12, 1, hidden)}  # a decode step's tokens
    assert compile_count() - before == len(buckets_used)  # tracing compiles nothing


def test_decode_phases_give_the_same_completions(loaded):
    """The cache grown 3 slots at a time (phases ending at 3, 6, ..., 20 new tokens) against one cache of
    all 20: the same key gives the same tokens, log-probs and ends, including rows that stop mid-phase
    and a loop that stops in a later phase."""
    model, params = loaded
    ids, mask = _prompts(7)
    results = [generate(model, params, ids, mask, jax.random.key(4),
                        SamplingConfig(num_generations=4, max_new_tokens=20, temperature=1.1,
                                       eos_token_ids=(3, 9, 17, 30), decode_phase_tokens=phase))
               for phase in (20, 3)]
    one, phased = results
    np.testing.assert_array_equal(np.asarray(phased.tokens), np.asarray(one.tokens))
    np.testing.assert_array_equal(np.asarray(phased.mask), np.asarray(one.mask))
    np.testing.assert_array_equal(np.asarray(phased.finished), np.asarray(one.finished))
    np.testing.assert_allclose(np.asarray(phased.logprobs), np.asarray(one.logprobs), atol=1e-5)
    assert int(phased.decode_steps) == int(one.decode_steps)
    assert np.asarray(one.finished).any() and np.asarray(one.mask).sum(1).max() > 3  # ends mid-phase, runs past one


def test_steps_between_stop_checks_give_the_same_completions(loaded):
    """Checking for the end every 16 decode steps instead of every step (decode_steps_per_check, GPUs'
    default): 20 new tokens run as 32 steps in phases of 3 rounded up to 16. The same key gives the same
    tokens, log-probs and ends; the 12 steps past 20 change nothing, even with the pad token a stop token
    (with this key, one row cut at 20 would draw a stop token among them)."""
    model, params = loaded
    ids, mask = _prompts(7)
    configs = [SamplingConfig(num_generations=4, max_new_tokens=20, temperature=1.1, pad_token_id=3,
                              eos_token_ids=(3, 9, 17, 30), decode_phase_tokens=3, decode_steps_per_check=steps)
               for steps in (1, 16)]
    one, chunked = (generate(model, params, ids, mask, jax.random.key(5), config) for config in configs)
    assert chunked.tokens.shape == (12, 20)
    for field in ("tokens", "mask", "finished"):
        np.testing.assert_array_equal(np.asarray(getattr(chunked, field)), np.asarray(getattr(one, field)))
    for field in ("logprobs", "policy_logprobs"):
        np.testing.assert_allclose(np.asarray(getattr(chunked, field)), np.asarray(getattr(one, field)), atol=1e-5)
    finished = np.asarray(one.finished)
    assert finished.any() and not finished.all()  # rows that end, and rows cut at 20 that must stay unfinished
    assert int(one.decode_steps) == 20 and int(chunked.decode_steps) == 32
    assert (steps_per_check_for("gpu"), steps_per_check_for("cpu"), steps_per_check_for("tpu")) == (16, 1, 1)
    # XLA knows the inner loop's trip count: what lets its GPU runtime run the steps without a host wait
    padded = np.zeros((4, 16), np.int32)  # the prompts' bucket: the program generate compiled
    hlo = _generate_jit.lower(model, configs[1], params, padded, padded + 1, jax.random.key(0)).compile().as_text()
    assert '"known_trip_count":{"n":"16"}' in hlo


def test_params_cast_once_give_the_same_completions_and_leave_the_loops_in_bf16(checkpoint):
    # float32 masters, bfloat16 compute: what the trainer samples with on an accelerator
    model, params = load_pretrained(checkpoint[0], dtype=jnp.bfloat16)
    ids, mask = _prompts(4)
    padded = (jnp.zeros((4, 16), jnp.int32), jnp.ones((4, 16), jnp.int32), jax.random.key(0))
    param_shapes = {x.shape for x in jax.tree.leaves(params)}
    results, loop_dtypes = [], []
    for cast in (True, False):
        config = SamplingConfig(num_generations=4, max_new_tokens=12, decode_phase_tokens=5, cast_params_once=cast)
        results.append(generate(model, params, ids, mask, jax.random.key(3), config))
        jaxpr = jax.make_jaxpr(_generate_program, static_argnums=(0, 1))(model, config, params, *padded)
        loops = [e for e in jaxpr.eqns if e.primitive.name == "while"]
        assert len(loops) == 3  # phases of 5, 10 and 12 tokens
        # the parameters the decode loops read: every operand shaped like a parameter
        loop_dtypes.append({str(x.aval.dtype) for e in loops for x in e.invars
                            if getattr(x.aval, "shape", None) in param_shapes and x.aval.ndim == 2})
    assert loop_dtypes == [{"bfloat16"}, {"float32"}]
    cast, per_step = results
    np.testing.assert_array_equal(np.asarray(cast.tokens), np.asarray(per_step.tokens))
    np.testing.assert_allclose(np.asarray(cast.logprobs), np.asarray(per_step.logprobs), atol=1e-5)
    np.testing.assert_allclose(np.asarray(cast.policy_logprobs), np.asarray(per_step.policy_logprobs), atol=1e-5)
    converted = params_in_compute_dtype(model.config, {"w": params["embedding"], "step": jnp.int32(3)})
    assert converted["w"].dtype == jnp.bfloat16 and converted["step"].dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(converted["w"]), np.asarray(params["embedding"].astype(jnp.bfloat16)))


@pytest.mark.parametrize("form", ["weights", "logits"])
@pytest.mark.parametrize("vocab, block", [(300, 128), (300, 8), (64, 64), (5, 8)])
def test_inverse_cdf_matches_a_float64_search(vocab, block, form):
    """``inverse_cdf`` on weights, and ``sample_logits`` on their logs (-inf for weight 0, shifted by a
    per-row offset that softmax ignores), against a float64 search; ``sample_logits``' logsumexp too."""
    rng = np.random.default_rng(vocab + block)
    rows = 400
    weights = rng.exponential(size=(rows, vocab)).astype(np.float32)
    weights[rng.random((rows, vocab)) < 0.5] = 0.0  # truncated tokens (top-k / top-p), some whole blocks
    weights[rows // 2:, : min(3 * block, vocab - 1)] = 0.0  # leading zero blocks
    weights[np.arange(rows), rng.integers(0, vocab, rows)] = 1.0  # every row keeps a token
    u = rng.random(rows).astype(np.float32)
    u[:3] = [0.0, np.nextafter(np.float32(1), np.float32(0)), 1e-30]  # the ends of [0, 1)
    if form == "weights":
        token = np.asarray(jax.jit(inverse_cdf, static_argnums=2)(jnp.asarray(weights), jnp.asarray(u), block))
    else:
        offset = rng.normal(scale=20.0, size=(rows, 1))
        with np.errstate(divide="ignore"):
            logits = (np.log(weights.astype(np.float64)) + offset).astype(np.float32)
        token, lse = (np.asarray(x) for x in jax.jit(sample_logits, static_argnums=2)(
            jnp.asarray(logits), jnp.asarray(u), block))
        np.testing.assert_allclose(lse, np.log(weights.astype(np.float64).sum(axis=1)) + offset[:, 0],
                                   rtol=1e-6, atol=1e-5)  # float32 logits of size ~60: rounding ~4e-6
    assert np.all(weights[np.arange(rows), token] > 0), "a token of weight 0 was chosen"
    cdf = np.cumsum(weights.astype(np.float64), axis=1)
    target = u.astype(np.float64) * cdf[:, -1]
    expected = np.argmax((cdf >= target[:, None]) & (cdf > 0), axis=1)
    # rows whose target lies within float32 rounding of a boundary may go either way
    gap = np.minimum(np.abs(cdf[np.arange(rows), expected] - target),
                     np.abs(np.where(expected > 0, cdf[np.arange(rows), expected - 1], -1.0) - target))
    clear = gap > 1e-5 * cdf[:, -1]
    assert clear.sum() > 0.95 * rows
    np.testing.assert_array_equal(token[clear], expected[clear])
    assert token[0] == np.flatnonzero(weights[0])[0]  # u = 0: the first token of weight > 0


def test_bucket_size():
    assert [bucket_size(n, (8, 16)) for n in (1, 8, 9, 16, 17, 33)] == [8, 8, 16, 16, 32, 48]


def test_bad_prompts_and_configs(loaded):
    model, params = loaded
    ids, mask = _prompts(6)
    right_padded = mask[:, ::-1].copy()
    with pytest.raises(ValueError, match=r"prompts must be left-padded.*row\(s\) \[0, 2\]"):
        generate(model, params, ids, right_padded, jax.random.key(0), SamplingConfig())
    empty = mask.copy()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"prompt row\(s\) \[1\] have no tokens"):
        generate(model, params, ids, empty, jax.random.key(0), SamplingConfig())
    with pytest.raises(ValueError, match=r"`top_p` must be in \(0, 1\], got 0.0"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match=r"`temperature` must be a finite number > 0"):
        SamplingConfig(temperature=0)
    with pytest.raises(ValueError, match=r"decode_phase_tokens"):
        SamplingConfig(decode_phase_tokens=0)
    with pytest.raises(ValueError, match=r"decode_steps_per_check"):
        SamplingConfig(decode_steps_per_check=0)
    with pytest.raises(TypeError, match=r"`cast_params_once` must be True or False"):
        SamplingConfig(cast_params_once="yes")
    with pytest.raises(TypeError, match=r"`gather_params_once` must be True or False"):
        SamplingConfig(gather_params_once=1)
    with pytest.raises(ValueError, match=r"`prompt_length_buckets` must be strictly ascending"):
        SamplingConfig(prompt_length_buckets=(64, 32))
    with pytest.raises(TypeError, match=r"`config` must be a SamplingConfig"):
        generate(model, params, ids, mask, jax.random.key(0), {"num_generations": 2})
