"""grpo_jax.data.iteration: seeded order, exact resume, splits, long-prompt policies."""

import json
import logging

import pytest

from grpo_jax.data.arithmetic import ArithmeticTask
from grpo_jax.data.example import user_prompt
from grpo_jax.data.iteration import PromptStream, split_train_eval


def ids(batches):
    return [[e["id"] for e in b] for b in batches]


def numbered(n, prompt=lambda i: f"problem {i}"):
    return [{"prompt": prompt(i), "id": i, "answer": str(i)} for i in range(n)]


def take(stream, k):
    return [stream.next_batch() for _ in range(k)]


def test_each_epoch_is_a_permutation_and_batches_cross_epochs():
    stream = PromptStream(numbered(10), batch_size=4, seed=1)
    flat = [i for b in ids(take(stream, 5)) for i in b]  # 20 examples = exactly 2 epochs
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # reshuffled per epoch
    assert flat[:10] != list(range(10))
    assert (stream.state()["epoch"], stream.state()["position"]) == (1, 10)  # rolls over on the next draw


def test_same_seed_same_sequence_other_seed_other_sequence():
    a = ids(take(PromptStream(numbered(30), batch_size=7, seed=5), 6))
    b = ids(take(PromptStream(numbered(30), batch_size=7, seed=5), 6))
    c = ids(take(PromptStream(numbered(30), batch_size=7, seed=6), 6))
    assert a == b and a != c


@pytest.mark.parametrize("consumed", [1, 2, 3, 4])  # mid-epoch (1), straddling (2: 8 of 10), later epochs
def test_resume_continues_identically(consumed):
    source = numbered(10)
    reference = PromptStream(source, batch_size=4, seed=3)
    expected = ids(take(reference, consumed + 6))
    first = PromptStream(source, batch_size=4, seed=3)
    take(first, consumed)
    saved = json.loads(json.dumps(first.state()))  # survives a JSON checkpoint
    resumed = PromptStream(source, batch_size=4, seed=999)  # the state's seed wins
    resumed.restore(saved)
    assert ids(take(resumed, 6)) == expected[consumed:]
    # the original keeps going identically too
    assert ids(take(first, 6)) == expected[consumed:]


def test_resume_exactly_at_an_epoch_boundary_and_with_drops():
    source = numbered(12, prompt=lambda i: "x" * (5 if i % 3 else 50))  # every third prompt is too long
    kwargs = dict(batch_size=4, seed=2, max_prompt_length=10, overlong="drop")
    expected = ids(take(PromptStream(source, **kwargs), 6))
    stream = PromptStream(source, **kwargs)
    take(stream, 2)  # 8 short prompts per epoch → 2 batches end exactly at the boundary
    state = stream.state()
    assert state["dropped"] == 4
    resumed = PromptStream(source, **kwargs)
    resumed.restore(state)
    assert ids(take(resumed, 4)) == expected[2:]
    assert all(i % 3 for b in expected for i in b)
    assert resumed.stats["dropped"] == stream.stats["dropped"] + 8


def test_num_epochs_and_drop_last():
    batches = list(PromptStream(numbered(10), batch_size=4, seed=0, num_epochs=2))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4]
    batches = list(PromptStream(numbered(10), batch_size=4, seed=0, num_epochs=1))
    assert [len(b) for b in batches] == [4, 4, 2]
    batches = list(PromptStream(numbered(10), batch_size=4, seed=0, num_epochs=1, drop_last=True))
    assert [len(b) for b in batches] == [4, 4]
    ordered = list(PromptStream(numbered(5), batch_size=5, shuffle=False, num_epochs=1))
    assert ids(ordered) == [[0, 1, 2, 3, 4]]


def test_batches_are_copies():
    source = numbered(3)
    batch = PromptStream(source, batch_size=3, seed=0).next_batch()
    batch[0]["prompt"] = "changed"
    assert all(e["prompt"].startswith("problem") for e in source)


def test_restore_rejects_a_different_source():
    state = PromptStream(numbered(10), batch_size=2).state()
    with pytest.raises(ValueError, match="saved for a source of 10 examples but this source has 11"):
        PromptStream(numbered(11), batch_size=2).restore(state)
    with pytest.raises(ValueError, match=r"lacks \['position'\]"):
        PromptStream(numbered(10), batch_size=2).restore({"seed": 0, "epoch": 0})


@pytest.mark.parametrize("method", ["hash", "exact"])
def test_split_is_disjoint_covering_and_deterministic(method):
    task = ArithmeticTask(500, seed=0)
    train, evals = split_train_eval(task, eval_fraction=0.2, seed=4, method=method)
    assert set(train.indices).isdisjoint(evals.indices)
    assert sorted(train.indices + evals.indices) == list(range(500))
    assert 60 <= len(evals) <= 140
    if method == "exact":
        assert len(evals) == 100
    again = split_train_eval(task, eval_fraction=0.2, seed=4, method=method)
    assert again[1].indices == evals.indices
    other = split_train_eval(task, eval_fraction=0.2, seed=5, method=method)
    assert other[1].indices != evals.indices


def test_hash_split_keeps_identical_prompts_together_and_survives_reordering():
    task = ArithmeticTask(400, seed=0)  # single-digit sums: many duplicate prompts
    train, evals = split_train_eval(task, eval_fraction=0.3, seed=0)
    assert {e["prompt"] for e in train}.isdisjoint({e["prompt"] for e in evals})
    examples = numbered(200)
    _, ev1 = split_train_eval(examples, eval_fraction=0.3, key="id")
    _, ev2 = split_train_eval(examples[::-1], eval_fraction=0.3, key="id")
    assert {e["id"] for e in ev1} == {e["id"] for e in ev2}
    # a split is a Sequence a stream can iterate
    assert len(PromptStream(ev1, batch_size=4).next_batch()) == 4


def test_drop_policy_counts_and_logs(caplog):
    source = numbered(6, prompt=lambda i: "y" * (3 if i < 4 else 30))
    stream = PromptStream(source, batch_size=4, seed=0, max_prompt_length=5, overlong="drop", num_epochs=3)
    with caplog.at_level(logging.WARNING, logger="grpo_jax.data.iteration"):
        batches = list(stream)
    assert sorted(i for b in ids(batches) for i in b) == sorted(list(range(4)) * 3)
    assert stream.stats == {"dropped": 6, "truncated": 0}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # once per example, later repeats go to debug
    assert "prompt length 30 > max_prompt_length 5" in warnings[0]


def test_truncate_policy_with_a_token_count():
    def words(p):  # a stand-in tokenizer: one token per word
        return len(p.split())

    source = [{"prompt": "one two three four five six", "id": 0}, {"prompt": "short one", "id": 1}]
    stream = PromptStream(source, batch_size=2, shuffle=False, max_prompt_length=4, length_fn=words,
                          overlong="truncate")
    batch = stream.next_batch()
    assert [e["prompt"] for e in batch] == ["one two three four ", "short one"]
    assert stream.stats == {"dropped": 0, "truncated": 1}
    assert source[0]["prompt"] == "one two three four five six"
    left = PromptStream(source, batch_size=1, shuffle=False, max_prompt_length=4, length_fn=words,
                        overlong="truncate", truncate_side="left").next_batch()
    assert left[0]["prompt"] == " three four five six"


def test_truncate_chat_prompt_cuts_the_last_message():
    prompt = user_prompt("0123456789" * 3, system="sys")
    stream = PromptStream([{"prompt": prompt}], batch_size=1, max_prompt_length=15, overlong="truncate")
    out = stream.next_batch()[0]["prompt"]
    assert out[0] == {"role": "system", "content": "sys"}
    assert out[1] == {"role": "user", "content": "01234567890"}  # "sys\n" + 11 characters = 15


def test_truncate_fn_and_impossible_truncation():
    source = [{"prompt": "abcdefgh"}]
    stream = PromptStream(source, batch_size=1, max_prompt_length=3, overlong="truncate",
                          truncate_fn=lambda p, n: p[-n:])
    assert stream.next_batch()[0]["prompt"] == "fgh"
    bad = PromptStream(source, batch_size=1, max_prompt_length=3, overlong="truncate",
                       truncate_fn=lambda p, n: p)
    with pytest.raises(ValueError, match="cannot truncate the prompt of source example 0"):
        bad.next_batch()


def test_error_policy_and_all_dropped():
    source = numbered(3, prompt=lambda i: "z" * 20)
    with pytest.raises(ValueError, match="length 20 > max_prompt_length=5"):
        PromptStream(source, batch_size=1, max_prompt_length=5, overlong="error").next_batch()
    with pytest.raises(ValueError, match="every one of the 3 examples"):
        PromptStream(source, batch_size=1, max_prompt_length=5, overlong="drop").next_batch()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "`batch_size` must be an int >= 1, got 0"),
        (dict(batch_size=2, overlong="clip"), "unknown overlong='clip'"),
        (dict(batch_size=2, max_prompt_length=0), "`max_prompt_length` must be None or an int >= 1"),
        (dict(batch_size=2, num_epochs=0), "`num_epochs` must be None or an int >= 1"),
    ],
)
def test_stream_argument_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        PromptStream(numbered(3), **kwargs)
    assert message in str(info.value)


def test_review_fixes_error_consumes_nothing_settings_checked_and_copies_are_deep():
    from grpo_jax.data import PromptStream

    stream = PromptStream([{"prompt": p} for p in ["a", "bbbb", "c"]], batch_size=2, shuffle=False,
                          max_prompt_length=2, overlong="error", length_fn=len)
    with pytest.raises(ValueError, match="max_prompt_length=2"):
        stream.next_batch()
    assert stream.state()["position"] == 0  # nothing was consumed by the failed call
    shuffled = PromptStream([{"prompt": p} for p in "abc"], batch_size=2, shuffle=True, seed=1)
    with pytest.raises(ValueError, match=r"saved with other settings .*'shuffle': \(True, False\)"):
        PromptStream([{"prompt": p} for p in "abc"], batch_size=2, shuffle=False).restore(shuffled.state())
    source = [{"prompt": [{"role": "user", "content": "hi"}]}]
    batch = PromptStream(source, batch_size=1, shuffle=False).next_batch()
    batch[0]["prompt"].append({"role": "user", "content": "more"})
    batch[0]["prompt"][0]["content"] = "changed"
    assert source[0]["prompt"] == [{"role": "user", "content": "hi"}]
