"""grpo_jax.data.reasoning_gym_tasks against reasoning-gym's real generators and scorers."""

import json
import subprocess
import sys

import pytest

reasoning_gym = pytest.importorskip("reasoning_gym")

from grpo_jax.data.example import validate_example  # noqa: E402
from grpo_jax.data.reasoning_gym_tasks import (  # noqa: E402
    DEFAULT_SYSTEM_PROMPT,
    FIELDS,
    from_json,
    load_reasoning_gym,
    reasoning_gym_reward,
    to_json,
)
from grpo_jax.rewards import RewardSpec, format_reward, score  # noqa: E402

# sentence_reordering: answers end in a full stop; arc_agi: its scorer compares tuples held in the metadata.
DATASETS = ["basic_arithmetic", "chain_sum", "leg_counting", "sentence_reordering", "arc_agi"]


def columns(examples):
    return {key: [example[key] for example in examples] for key in FIELDS}


def answered(text):
    return f"<think>working it out</think>\n<answer>{text}</answer>"


def test_examples_are_deterministic_and_reproducible_from_their_fields():
    first = load_reasoning_gym("chain_sum", size=20, seed=3)
    assert load_reasoning_gym("chain_sum", size=20, seed=3) == first
    other = load_reasoning_gym("chain_sum", size=20, seed=4)
    assert sum(a["question"] != b["question"] for a, b in zip(first, other, strict=True)) >= 15
    for index, example in enumerate(first):
        # rg_config holds create_dataset's exact arguments: the entry can be regenerated from the example alone.
        assert from_json(example["rg_config"]) == {"size": 20, "seed": 3}
        entry = reasoning_gym.create_dataset("chain_sum", **from_json(example["rg_config"]))[index]
        assert (entry["question"], entry["answer"]) == (example["question"], example["answer"])
        assert from_json(example["rg_metadata"]) == entry["metadata"]


@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum"])
def test_arithmetic_answers_are_the_value_of_the_expression(name):
    for example in load_reasoning_gym(name, size=30, seed=0):
        expression = from_json(example["rg_metadata"])["expression"]
        assert expression in example["question"]
        assert float(example["answer"]) == pytest.approx(eval(expression, {}), abs=1e-9), example


def test_leg_counting_answer_is_the_total():
    for example in load_reasoning_gym("leg_counting", size=10, seed=0):
        metadata = from_json(example["rg_metadata"])
        assert example["answer"] == str(metadata["total_legs"])
        assert all(f"{count} " in example["question"] for count in metadata["animals"].values())


def test_config_options_reach_the_generator():
    config = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    examples = load_reasoning_gym("chain_sum", size=30, seed=1, config=config)
    for example in examples:
        terms = from_json(example["rg_metadata"])["expression"].split()[::2]
        assert len(terms) == 2 and all(0 <= int(t) <= 9 for t in terms), example
    assert from_json(examples[0]["rg_config"]) == {"size": 30, "seed": 1, **config}


def test_prompt_forms():
    chat = load_reasoning_gym("leg_counting", size=2, seed=0)[0]
    assert chat["prompt"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": chat["question"]},
    ]
    bare = load_reasoning_gym("leg_counting", size=2, seed=0, system_prompt=None)[0]
    assert bare["prompt"] == [{"role": "user", "content": chat["question"]}]
    text = load_reasoning_gym("leg_counting", size=2, seed=0, system_prompt="Be brief.", chat=False)[0]
    assert text["prompt"] == "Be brief.\n\n" + chat["question"]
    for example in (chat, bare, text):
        validate_example(example, required=FIELDS)
        assert {k: v for k, v in example.items() if k != "prompt"} == {k: v for k, v in chat.items() if k != "prompt"}


@pytest.mark.parametrize("name", DATASETS)
def test_the_oracle_answer_scores_one_after_a_json_round_trip(name):
    examples = json.loads(json.dumps(load_reasoning_gym(name, size=8, seed=5)))
    assert all(isinstance(example[key], str) for example in examples for key in FIELDS)
    rewards = reasoning_gym_reward([answered(e["answer"]) for e in examples], **columns(examples))
    assert rewards == [1.0] * len(examples)


def test_one_batch_can_mix_datasets():
    examples = [e for name in DATASETS for e in load_reasoning_gym(name, size=2, seed=0)]
    completions = [answered(e["answer"]) for e in examples]
    assert reasoning_gym_reward(completions, **columns(examples)) == [1.0] * len(examples)
    # every completion now answers another dataset's question: full marks only where the answers coincide
    others = examples[2:] + examples[:2]
    rewards = reasoning_gym_reward([answered(e["answer"]) for e in others], **columns(examples))
    assert [r == 1.0 for r in rewards] == [e["answer"] == o["answer"] for e, o in zip(examples, others, strict=True)]
    assert rewards.count(1.0) < len(examples) - 2


@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum", "leg_counting"])
def test_wrong_and_missing_answers(name):
    examples = load_reasoning_gym(name, size=10, seed=2)
    fields = columns(examples)
    off_by_one = [answered(int(float(e["answer"])) + 1) for e in examples]
    assert reasoning_gym_reward(off_by_one, **fields) == [0.0] * 10
    no_tag = [f"The answer is {e['answer']}." for e in examples]
    assert reasoning_gym_reward(no_tag, **fields) == [0.0] * 10
    # the last <answer> block counts
    right_then_wrong = [answered(e["answer"]) + "<answer>0.5</answer>" for e in examples]
    assert reasoning_gym_reward(right_then_wrong, **fields) == [0.0] * 10
    wrong_then_right = ["<answer>0.5</answer>" + answered(e["answer"]) for e in examples]
    assert reasoning_gym_reward(wrong_then_right, **fields) == [1.0] * 10


def test_partial_credit_is_the_datasets_own():
    examples = load_reasoning_gym("leg_counting", size=5, seed=0)
    rewards = reasoning_gym_reward([answered(f"{e['answer']} legs") for e in examples], **columns(examples))
    # reasoning-gym's default scorer: len(oracle) / len(answer) when the oracle is inside the answer
    assert rewards == pytest.approx([len(e["answer"]) / len(f"{e['answer']} legs") for e in examples])
    assert all(0.0 < r < 1.0 for r in rewards)


def test_plain_json_metadata_would_break_arc_scoring():
    example = load_reasoning_gym("arc_agi", size=1, seed=5)[0]
    lossy = dict(example, rg_metadata=to_json(json.loads(json.dumps(from_json(example["rg_metadata"])))))
    assert lossy["rg_metadata"] != example["rg_metadata"]
    completion = [answered(example["answer"])]
    assert reasoning_gym_reward(completion, **columns([example])) == [1.0]
    # lists no longer equal the parsed tuples: arc's score for a well-formed but wrong board
    assert reasoning_gym_reward(completion, **columns([lossy])) == [0.05]


def test_to_json_keeps_tuples_and_non_str_keys():
    value = {"grid": ((1, 2), (3, 4)), 7: [None, 1.5, True], (0, 1): "edge", "__tuple__": "looks like a tag"}
    back = from_json(to_json(value))
    assert back == value and isinstance(back["grid"][0], tuple) and 7 in back and (0, 1) in back
    assert from_json(to_json([(), {}, ""])) == [(), {}, ""]
    for bad in ({1, 2}, float("nan"), {"x": object()}):
        with pytest.raises(TypeError, match="JSON"):
            to_json(bad)


def test_a_scorer_that_raises_scores_zero_without_a_failure():
    examples = load_reasoning_gym("prime_factorization", size=3, seed=0)
    with pytest.raises(ValueError):  # reasoning-gym 0.1.25's scorer itself raises on a malformed answer
        reasoning_gym.create_dataset("prime_factorization").score_answer("two", {**examples[0], "metadata": {}})
    completions = [answered("two"), answered(examples[1]["answer"]), "no answer"]
    specs = [RewardSpec(reasoning_gym_reward), RewardSpec(format_reward, weight=0.5)]
    fields = {"prompt": [e["prompt"] for e in examples], **columns(examples)}
    total, per_reward, failures = score(specs, completions, fields)
    assert failures == []
    assert per_reward["reasoning_gym_reward"].tolist() == [0.0, 1.0, 0.0]
    assert total.tolist() == [0.5, 1.5, 0.0]


def test_loader_errors_name_the_argument():
    unknown = r"`name` 'chain_sums' is not a reasoning-gym dataset; did you mean 'chain_sum'"
    with pytest.raises(ValueError, match=unknown):
        load_reasoning_gym("chain_sums", size=2, seed=0)
    with pytest.raises(ValueError, match="`name` 3 is not"):
        load_reasoning_gym(3, size=2, seed=0)
    for size in (0, -1, 2.5, True, "3", None):
        with pytest.raises(ValueError, match=rf"`size` must be an int >= 1, got {size!r}"):
            load_reasoning_gym("chain_sum", size=size, seed=0)
    with pytest.raises(ValueError, match="`seed` must be an int"):
        load_reasoning_gym("chain_sum", size=2, seed="0")
    options = r"unknown option\(s\) \['max_term'\] for 'chain_sum'; its options are \[.*'max_terms'"
    with pytest.raises(ValueError, match=options):
        load_reasoning_gym("chain_sum", size=2, seed=0, config={"max_term": 3})
    with pytest.raises(ValueError, match="pass `seed` as an argument"):
        load_reasoning_gym("chain_sum", size=2, seed=0, config={"seed": 1})
    with pytest.raises(ValueError, match="'chain_sum' rejected `config`"):
        load_reasoning_gym("chain_sum", size=2, seed=0, config={"min_terms": 5, "max_terms": 2})
    with pytest.raises(TypeError, match="`system_prompt` must be a str or None"):
        load_reasoning_gym("chain_sum", size=2, seed=0, system_prompt=["hi"])


def test_reward_errors_name_the_field():
    fields = columns(load_reasoning_gym("chain_sum", size=2, seed=0))
    with pytest.raises(ValueError, match="`answer` has 1 values but there are 2 completions"):
        reasoning_gym_reward(["a", "b"], **{**fields, "answer": fields["answer"][:1]})
    with pytest.raises(TypeError, match="`completions` must be a list of str, got one str"):
        reasoning_gym_reward("a", **fields)
    with pytest.raises(ValueError, match="`name` 'nope' is not a reasoning-gym dataset"):
        reasoning_gym_reward(["a", "b"], **{**fields, "rg_dataset": ["nope", "nope"]})
    with pytest.raises(TypeError, match=r"`rg_metadata\[0\]` must be a str, got dict"):
        reasoning_gym_reward(["a", "b"], **{**fields, "rg_metadata": [{}, {}]})


def test_reasoning_gym_stays_optional(monkeypatch):
    # grpo_jax.data and this module import without reasoning-gym; using them says how to install it.
    code = (
        "import sys; sys.modules['reasoning_gym'] = None\n"
        "import grpo_jax.data, grpo_jax.data.reasoning_gym_tasks as m\n"
        "assert 'reasoning_gym' not in {k for k, v in sys.modules.items() if v is not None}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ImportError, match="load_reasoning_gym needs reasoning-gym.*pip install reasoning-gym"):
        load_reasoning_gym("chain_sum", size=2, seed=0)
