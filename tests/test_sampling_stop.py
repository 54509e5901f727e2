"""grpo_jax.sampling: multi-token stop sequences (SamplingConfig.stop_sequences) against a NumPy reference.

A tiny random Qwen2-shaped model (no checkpoint), its matrices scaled up so that it samples a peaked, repetitive
distribution: short token sequences then recur within and across rows, so one sequence stops several rows at
different steps. A run with stop sequences must equal the run without them (same key) cut at the first stop.
"""

import dataclasses

import jax
import numpy as np
import pytest

from grpo_jax.models import ModelConfig, build_model, init_params, param_shardings
from grpo_jax.sampling import SamplingConfig, _generate_program, generate
from grpo_jax.sharding import make_mesh

VOCAB = 16
MODEL = ModelConfig(model_type="qwen2", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
BASE = SamplingConfig(num_generations=4, max_new_tokens=24, eos_token_ids=(5,), pad_token_id=0)
FIELDS = ("tokens", "mask", "logprobs", "policy_logprobs", "finished")


@pytest.fixture(scope="module")
def tiny():
    model = build_model(MODEL)
    params = init_params(model, jax.random.key(0))
    # normal(0.02) weights give nearly uniform logits; 20x gives a peaked distribution with recurring n-grams
    return model, jax.tree.map(lambda x: x * 20 if x.ndim >= 2 else x, params)


def _prompts(rows=3, width=6, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, VOCAB, (rows, width)).astype(np.int32)
    mask = np.ones_like(ids)
    for i in range(rows):
        mask[i, : i % width] = 0  # left padding of 0, 1, 2 ... slots
        ids[i, : i % width] = 0
    return ids, mask


def _numpy(result):
    return {f: np.asarray(getattr(result, f)) for f in FIELDS}


def _first_stop(row, eos, sequences):
    """The index of the token that ends ``row`` (its first EOS, or the last token of the first stop sequence
    to complete within the generated tokens), or None."""
    for t in range(len(row)):
        if row[t] in eos or any(t + 1 >= len(s) and tuple(row[t + 1 - len(s): t + 1]) == s for s in sequences):
            return t
    return None


def _reference(free, config):
    """What a run with ``config.stop_sequences`` gives, from the run without them (same key): each row cut
    after its first stop, pad_token_id / mask 0 / log-probs 0 after it. Also the end index of each row."""
    expected = {f: x.copy() for f, x in free.items()}
    ends = []
    for r in range(free["tokens"].shape[0]):
        end = _first_stop(free["tokens"][r][free["mask"][r] == 1], config.eos_token_ids, config.stop_sequences)
        ends.append(end)
        if end is not None:
            expected["tokens"][r, end + 1:] = config.pad_token_id
            expected["mask"][r, end + 1:] = 0
            expected["logprobs"][r, end + 1:] = 0.0
            expected["policy_logprobs"][r, end + 1:] = 0.0
            expected["finished"][r] = True
    return expected, ends


def _assert_same(got, expected):
    for f in FIELDS:  # bit for bit: the stop sequences change when a row ends, never what it samples
        np.testing.assert_array_equal(got[f], expected[f], err_msg=f)


def _most_common_ngram(tokens, mask, k, eos):
    """The k-gram of generated tokens (no EOS in it) found in the most rows."""
    rows_with = {}
    for r in range(tokens.shape[0]):
        row = tokens[r][mask[r] == 1]
        for t in range(len(row) - k + 1):
            gram = tuple(int(x) for x in row[t: t + k])
            if not set(gram) & set(eos):
                rows_with.setdefault(gram, set()).add(r)
    return max(rows_with, key=lambda g: (len(rows_with[g]), g))


@pytest.mark.parametrize("k, phase, steps", [(2, 256, 1), (3, 5, 4)])
def test_stop_sequence_cuts_each_row_at_its_first_occurrence(tiny, k, phase, steps):
    """A k-token sequence taken from an unconstrained sample: every row equals the sample up to and including
    the sequence's first completion (or an earlier EOS), then padding; rows without it are unchanged. Also
    with the cache grown 5 slots at a time and the end checked every 4 steps."""
    model, params = tiny
    ids, mask = _prompts()
    config = dataclasses.replace(BASE, decode_phase_tokens=phase, decode_steps_per_check=steps)
    free = _numpy(generate(model, params, ids, mask, jax.random.key(1), config))
    stop = _most_common_ngram(free["tokens"], free["mask"], k, config.eos_token_ids)
    stopped = generate(model, params, ids, mask, jax.random.key(1), dataclasses.replace(config, stop_sequences=(stop,)))
    got = _numpy(stopped)
    expected, ends = _reference(free, dataclasses.replace(config, stop_sequences=(stop,)))
    _assert_same(got, expected)
    # the cases the reference distinguishes all occur: rows the sequence ends (at different steps), rows an
    # EOS ends, rows cut at max_new_tokens as before
    by_sequence = {r: e for r, e in enumerate(ends)
                   if e is not None and free["tokens"][r, e] not in config.eos_token_ids}
    assert len(by_sequence) >= 3 and len(set(by_sequence.values())) >= 2, (stop, ends)
    assert any(e is not None and r not in by_sequence for r, e in enumerate(ends)), ends  # an EOS first
    for r, end in by_sequence.items():
        assert end >= k - 1 and tuple(got["tokens"][r, end + 1 - k: end + 1]) == stop
    assert got["finished"].sum() > free["finished"].sum() and not got["finished"].all()
    assert got["mask"].sum() < free["mask"].sum()
    assert int(stopped.decode_steps) <= int(np.asarray(generate(
        model, params, ids, mask, jax.random.key(1), config).decode_steps))


def test_several_sequences_and_only_generated_tokens_count(tiny):
    """Sequences of 2, 3 and 3 tokens at once (two of the same length, compared in one go), plus sequences that
    would match only with the prompt's last token or with the not-yet-generated (pad) slots: they must not
    end a row at its first steps."""
    model, params = tiny
    ids, mask = _prompts(rows=4, seed=3)
    free = _numpy(generate(model, params, ids, mask, jax.random.key(2), BASE))
    tokens = free["tokens"]
    pad = BASE.pad_token_id
    common2 = _most_common_ngram(tokens, free["mask"], 2, BASE.eos_token_ids)
    common3 = _most_common_ngram(tokens, free["mask"], 3, BASE.eos_token_ids)
    tricky = [
        (int(ids[0, -1]), int(tokens[0, 0])),  # the prompt's last token + row 0's first: not generated
        (pad, int(tokens[4, 0])),  # at step 0 the previous slot holds the pad id, not a token
        (pad, pad, int(tokens[8, 0])),
        (int(tokens[12, 0]), pad, int(tokens[12, 1])),  # step 1 of a 3-token sequence: the slice is clamped
    ]
    config = dataclasses.replace(BASE, stop_sequences=[list(common2), common3, *tricky])
    assert config.stop_sequences == (common2, common3, *tricky)  # lists normalised to tuples
    got = _numpy(generate(model, params, ids, mask, jax.random.key(2), config))
    expected, ends = _reference(free, config)
    _assert_same(got, expected)
    assert sum(e is not None for e in ends) > sum(free["finished"])
    # had the prompt or the unwritten slots counted, these rows would have ended at step 0 or 1
    assert all(ends[r] is None or ends[r] > 1 for r in (0, 4, 8, 12)), ends


def test_single_token_stop_sequence_is_an_eos_id(tiny):
    model, params = tiny
    ids, mask = _prompts()
    as_sequence = dataclasses.replace(BASE, stop_sequences=((9,),))
    as_eos = dataclasses.replace(BASE, eos_token_ids=(5, 9))
    a = _numpy(generate(model, params, ids, mask, jax.random.key(1), as_sequence))
    b = _numpy(generate(model, params, ids, mask, jax.random.key(1), as_eos))
    _assert_same(a, b)
    free = _numpy(generate(model, params, ids, mask, jax.random.key(1), BASE))
    assert a["finished"].sum() > free["finished"].sum()  # 9 ended rows that 5 did not
    # the same program, op for op
    padded = (np.zeros((4, 16), np.int32), np.ones((4, 16), np.int32), jax.random.key(0))
    jaxprs = [str(jax.make_jaxpr(_generate_program, static_argnums=(0, 1))(model, c, params, *padded))
              for c in (as_sequence, as_eos)]
    assert jaxprs[0] == jaxprs[1]


def test_sequences_longer_than_the_completion_change_nothing(tiny):
    model, params = tiny
    ids, mask = _prompts()
    config = dataclasses.replace(BASE, max_new_tokens=6)
    long = dataclasses.replace(config, stop_sequences=((1, 2, 3, 4, 6, 7, 8),))  # 7 tokens > 6
    padded = (np.zeros((4, 16), np.int32), np.ones((4, 16), np.int32), jax.random.key(0))
    jaxprs = [str(jax.make_jaxpr(_generate_program, static_argnums=(0, 1))(model, c, params, *padded))
              for c in (config, long)]
    assert jaxprs[0] == jaxprs[1]


@pytest.mark.parametrize("axes", [{"data": 8}, {"fsdp": 4, "tensor": 2}])
def test_mesh_gives_the_same_output_as_one_device(tiny, axes):
    model, params = tiny
    mesh = make_mesh(axes)
    sharded_model = build_model(MODEL, mesh)
    sharded_params = jax.device_put(params, param_shardings(sharded_model, mesh))
    ids, mask = _prompts(rows=8, seed=5)
    free = _numpy(generate(model, params, ids, mask, jax.random.key(3), BASE))
    stops = (_most_common_ngram(free["tokens"], free["mask"], 2, BASE.eos_token_ids),
             _most_common_ngram(free["tokens"], free["mask"], 3, BASE.eos_token_ids))
    config = dataclasses.replace(BASE, stop_sequences=stops, decode_phase_tokens=8)
    single = _numpy(generate(model, params, ids, mask, jax.random.key(3), config))
    sharded = _numpy(generate(sharded_model, sharded_params, ids, mask, jax.random.key(3), config))
    for f in ("tokens", "mask", "finished"):
        np.testing.assert_array_equal(sharded[f], single[f], err_msg=f)
    for f in ("logprobs", "policy_logprobs"):
        np.testing.assert_allclose(sharded[f], single[f], atol=1e-5, err_msg=f)
    assert single["finished"].sum() > free["finished"].sum() + 4  # the sequences ended rows on every device
    assert single["mask"].sum() < free["mask"].sum()


def test_bad_stop_sequences():
    with pytest.raises(ValueError, match=r"`stop_sequences`\[1\] is empty"):
        SamplingConfig(stop_sequences=((3, 4), ()))
    with pytest.raises(ValueError, match=r"`stop_sequences`\[0\] must hold token ids \(ints >= 0\), got \(3, -1\)"):
        SamplingConfig(stop_sequences=[[3, -1]])
    with pytest.raises(ValueError, match=r"`stop_sequences`\[0\] must hold token ids"):
        SamplingConfig(stop_sequences=[[1.5]])
    with pytest.raises(TypeError, match=r"`stop_sequences`\[0\] must be a sequence of token ids, got 3"):
        SamplingConfig(stop_sequences=(3, 4))  # one sequence not wrapped in a tuple
    with pytest.raises(TypeError, match=r"`stop_sequences` must be a sequence of token-id sequences"):
        SamplingConfig(stop_sequences="</py>")
    assert SamplingConfig(stop_sequences=[np.array([4, 5]), [6]]).stop_sequences == ((4, 5), (6,))
    assert SamplingConfig().stop_sequences == ()
    hash(SamplingConfig(stop_sequences=[[4, 5]]))  # a static argument of the jitted sampler
