"""grpo_jax.trainer.registry: tasks, rewards and step rewards by name, the one table config validation and
trainer.tasks both read. Every built-in entry resolves, unknown names are rejected with the registered ones
listed, a task or reward registered by the user is found by both, and the documentation lists every name."""

import functools
import json
import pathlib
import subprocess
import sys

import pytest

import grpo_jax.trainer.tasks as tasks_module
from grpo_jax.rewards import code_reward
from grpo_jax.trainer import ConfigError, DataConfig, GRPOConfig, TrainConfig, registry
from grpo_jax.trainer.registry import (
    REWARDS,
    STEP_REWARDS,
    TASKS,
    Reward,
    Task,
    get_reward,
    get_step_reward,
    get_task,
    register_reward,
    register_step_reward,
    register_task,
)
from grpo_jax.trainer.tasks import check_reward_fields, load_examples, reward_specs, step_reward_fn

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILTIN_TASKS = ("arithmetic", "products", "gsm8k_jsonl", "gsm8k_tfds", "math", "jsonl", "humaneval", "reasoning_gym")
BUILTIN_REWARDS = ("math", "format", "format_lenient", "code", "reasoning_gym")
BUILTIN_STEP_REWARDS = ("arithmetic_steps",)
GSM8K_RECORD = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}
MATH_RECORD = {"problem": "What is $1 + 1$?", "solution": "$1 + 1 = \\boxed{2}$"}


@pytest.fixture
def restore_registries():
    """Entries a test registers are removed afterwards (registries are per process, shared by the tests)."""
    saved = [(table, dict(table)) for table in (TASKS, REWARDS, STEP_REWARDS)]
    yield
    for table, contents in saved:
        table.clear()
        table.update(contents)


def write_jsonl(path, record):
    path.write_text(json.dumps(record) + "\n")
    return str(path)


def test_the_builtin_entries_are_registered():
    assert set(TASKS) == set(BUILTIN_TASKS)
    assert set(REWARDS) == set(BUILTIN_REWARDS)
    assert set(STEP_REWARDS) == set(BUILTIN_STEP_REWARDS)
    assert all(isinstance(task, Task) and task.description for task in TASKS.values())
    assert all(isinstance(reward, Reward) and reward.description for reward in REWARDS.values())


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_every_builtin_task_loads_through_its_entry(name, tmp_path, monkeypatch):
    """Each task's loader gets the DataConfig's settings; the optional packages' loaders (tensorflow-datasets,
    reasoning-gym) are stood in for, since only the wiring is under test here."""
    import grpo_jax.data.reasoning_gym_tasks as reasoning_gym_tasks
    import grpo_jax.data.tfds_source as tfds_source

    calls = []
    monkeypatch.setattr(tfds_source, "load_gsm8k_tfds",
                        lambda split, data_dir: calls.append((split, data_dir)) or [{"prompt": "q", "answer": "1"}])
    monkeypatch.setattr(reasoning_gym_tasks, "load_reasoning_gym",
                        lambda name, size, seed: calls.append((name, size, seed)) or [{"prompt": "q"}] * size)
    settings = {
        "arithmetic": {"num_examples": 10},
        "products": {"num_examples": 6},
        "gsm8k_jsonl": {"path": write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_RECORD)},
        "gsm8k_tfds": {"path": str(tmp_path), "split": "test[:4]"},
        "math": {"path": write_jsonl(tmp_path / "math.jsonl", MATH_RECORD)},
        "jsonl": {"path": write_jsonl(tmp_path / "math.jsonl", MATH_RECORD)},
        "humaneval": {},
        "reasoning_gym": {"dataset_name": "chain_sum", "num_examples": 3, "seed": 5},
    }[name]
    examples = load_examples(DataConfig(task=name, **settings))
    assert len(examples) > 0 and all("prompt" in examples[index] for index in range(len(examples)))
    expected = {
        "arithmetic": lambda: len(examples) == 10 and "answer" in examples[0],
        "products": lambda: len(examples) == 6 and "tool_code" in examples[0],
        "gsm8k_jsonl": lambda: examples[0]["final_answer"] == "7",
        "gsm8k_tfds": lambda: calls == [("test[:4]", str(tmp_path))],
        "math": lambda: examples[0]["answer"] == "2",
        "jsonl": lambda: examples[0]["answer"] == "2",
        "humaneval": lambda: len(examples) == 164 and "tests" in examples[0],
        "reasoning_gym": lambda: calls == [("chain_sum", 3, 5)] and len(examples) == 3,
    }[name]
    assert expected(), (name, calls)


def test_every_builtin_reward_resolves():
    grpo = GRPOConfig(rewards=BUILTIN_REWARDS, code_timeout_s=2.5)
    functions = {spec.name: spec.fn for spec in reward_specs(grpo)}
    assert list(functions) == list(BUILTIN_REWARDS)
    assert functions["math"](["#### 7", "8"], answer=["7", "7"]) == [1.0, 0.0]
    loose = "Let me see. <think>1 + 1</think> so <answer>2</answer> done"
    strict = "<think>1 + 1</think>\n<answer>2</answer>"
    assert functions["format"]([strict, loose]) == [1.0, 0.0]
    assert functions["format_lenient"]([strict, loose]) == [1.0, 1.0]  # lenient: other text around the blocks
    assert isinstance(functions["code"], functools.partial) and functions["code"].func is code_reward
    assert functions["code"].keywords == {"timeout_s": 2.5}
    from grpo_jax.data.reasoning_gym_tasks import reasoning_gym_reward

    assert functions["reasoning_gym"] is reasoning_gym_reward
    for name in BUILTIN_REWARDS:
        assert get_reward(name) is REWARDS[name]


def test_step_rewards_resolve():
    assert step_reward_fn(GRPOConfig()) is None
    for name in BUILTIN_STEP_REWARDS:
        assert step_reward_fn(GRPOConfig(step_reward=name)) is STEP_REWARDS[name] is get_step_reward(name)


def test_unknown_names_list_the_registered_ones():
    for make, registered in ((lambda: DataConfig(task="nope"), TASKS),
                             (lambda: GRPOConfig(rewards=("nope",)), REWARDS),
                             (lambda: GRPOConfig(step_reward="nope"), STEP_REWARDS),
                             (lambda: get_task("nope"), TASKS),
                             (lambda: get_reward("nope"), REWARDS),
                             (lambda: get_step_reward("nope"), STEP_REWARDS)):
        with pytest.raises(ConfigError, match="'nope'") as error:
            make()
        assert all(repr(name) in str(error.value) for name in registered), str(error.value)


def test_settings_a_task_or_reward_requires_are_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match=r"data.path=None is invalid: expected a file or directory for task 'math'"):
        DataConfig(task="math")
    with pytest.raises(ConfigError, match="data.dataset_name=None is invalid: expected a dataset"):
        DataConfig(task="reasoning_gym")
    with pytest.raises(ConfigError, match=r"the code reward needs a task with tests \(humaneval\)"):
        TrainConfig(grpo=GRPOConfig(rewards=("code",)))
    TrainConfig(data=DataConfig(task="humaneval"), grpo=GRPOConfig(rewards=("code",)))


def test_a_registered_task_and_reward_are_found_by_validation_and_by_the_trainer(restore_registries, tmp_path):
    def load_countdown(data):
        return [{"prompt": f"Count down from {n}.", "target": str(n)} for n in range(data.num_examples)]

    def made(grpo):
        return lambda completions, target, **fields: [float(c.strip() == t) for c, t in zip(completions, target,
                                                                                             strict=True)]

    register_task("countdown", Task(load_countdown, "count down from n; target"))
    register_reward("countdown_exact", Reward(made, "1 when the completion is the target", ("target",),
                                              tasks=("countdown",)))
    register_step_reward("no_steps", lambda completions, **fields: [[] for _ in completions])

    data = DataConfig(task="countdown", num_examples=5)
    grpo = GRPOConfig(rewards=("countdown_exact", "format"), step_reward="no_steps")
    TrainConfig(data=data, grpo=grpo)
    examples = load_examples(data)
    assert [example["target"] for example in examples] == ["0", "1", "2", "3", "4"]
    specs = reward_specs(grpo)
    assert specs[0].name == "countdown_exact" and specs[0].fn(["3", "4"], target=["3", "3"]) == [1.0, 0.0]
    check_reward_fields(grpo, data, examples[0])
    assert step_reward_fn(grpo)(["a", "b"]) == [[], []]
    assert "countdown" in registry.describe() and "countdown_exact" in registry.describe()

    # the reward's own requirements: a task it does not name is rejected at config time, and its fields are
    # checked against the loaded example (math reads "answer", which countdown's examples lack)
    with pytest.raises(ConfigError, match=r"the countdown_exact reward needs a task with target \(countdown\)"):
        TrainConfig(grpo=GRPOConfig(rewards=("countdown_exact",)))
    with pytest.raises(ConfigError, match=r"'math', which reads the example field\(s\) \['answer'\]"):
        check_reward_fields(GRPOConfig(rewards=("math",)), data, examples[0])

    register_task("my_files", Task(lambda data: [], "files at data.path", needs_path=True))
    with pytest.raises(ConfigError, match="data.path=None is invalid: expected a file or directory for task"):
        DataConfig(task="my_files")


def test_registering_rejects_clashes_and_bad_entries(restore_registries):
    with pytest.raises(ValueError, match="'math' is already registered"):
        register_reward("math", REWARDS["format"])
    register_reward("math", REWARDS["format"], replace=True)
    assert reward_specs(GRPOConfig(rewards=("math",)))[0].fn(["<think>a</think><answer>1</answer>"]) == [1.0]
    with pytest.raises(ValueError, match="without ':'"):
        register_reward("pkg.module:fn", REWARDS["format"])
    with pytest.raises(TypeError, match="expected a Task"):
        register_task("loader_only", lambda data: [])
    with pytest.raises(TypeError, match="expected a function"):
        register_step_reward("not_callable", "arithmetic_steps")


def test_import_path_rewards_need_no_registration():
    name = "grpo_jax.rewards.format:format_reward"
    assert name not in REWARDS
    assert reward_specs(GRPOConfig(rewards=(name,)))[0].fn(["<think>a</think><answer>1</answer>"]) == [1.0]


def test_documentation_lists_every_name():
    """describe() and the registry's docstring are generated from the entries; tasks.py points to the registry
    instead of repeating the list; the README's architecture section names the registry."""
    described = registry.describe()
    for name in (*TASKS, *REWARDS, *STEP_REWARDS):
        assert f"  {name} " in described and f"  {name} " in registry.__doc__, name
    assert "grpo_jax.trainer.registry" in tasks_module.__doc__
    assert "trainer/registry.py" in (ROOT / "README.md").read_text()


def test_importing_the_registry_imports_no_optional_package_and_no_cycle():
    for first in ("grpo_jax.trainer.registry", "grpo_jax.trainer.config"):
        code = (f"import sys, {first}\n"
                "heavy = [m for m in ('tensorflow_datasets', 'reasoning_gym') if m in sys.modules]\n"
                "assert not heavy, heavy\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 0, proc.stderr
