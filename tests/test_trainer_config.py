"""TrainConfig: validation at construction, command-line overrides, recipes and round trips."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_jax.trainer import ConfigError, GRPOConfig, TrainConfig, apply_overrides, load_config
from grpo_jax.trainer.config import DataConfig, parse_mesh
from grpo_jax.trainer.context import run_sampling_config
from grpo_jax.trainer.default import get_config

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_parse_by_field_type():
    config = apply_overrides(TrainConfig(), [
        "grpo.beta=0", "epsilon_high=0.28", "rewards=math,format", "reward_weights=1,0.5", "run.mesh=fsdp:4,tensor:2",
        "max_steps=7", "mask_truncated_completions=true", "data.system_prompt=none", "name=exp1",
        "--grpo.loss_type=dr_grpo", "model.attention_query_block=64", "grpo.decode_phase_tokens=64",
        "grpo.cast_params_once=false", "grpo.top_k=5", "grpo.gather_params_once=false", "decode_steps_per_check=4",
    ])
    grpo = config.grpo
    assert (grpo.beta, grpo.epsilon_high, grpo.rewards, grpo.reward_weights) == (0.0, 0.28, ("math", "format"),
                                                                              (1.0, 0.5))
    assert grpo.mask_truncated_completions is True and grpo.aggregation == "seq-mean-token-sum-norm"
    assert config.run.mesh_axes == {"fsdp": 4, "tensor": 2} and config.run.max_steps == 7
    assert config.data.system_prompt is None and config.name == "exp1"
    assert config.model.attention_query_block == 64
    sampling = run_sampling_config(config.sampling, 100, (7, 9), 0)  # what the sampler gets
    assert (sampling.decode_phase_tokens, sampling.cast_params_once, sampling.top_k) == (64, False, 5)
    assert sampling.gather_params_once is False and sampling.decode_steps_per_check == 4
    # None: generate() decides for the device
    assert run_sampling_config(TrainConfig().sampling, 100, (7,), 0).decode_steps_per_check is None
    assert (sampling.eos_token_ids, sampling.max_new_tokens, sampling.num_generations) == ((7, 9), 256, 8)
    assert sampling.prompt_length_buckets == (16, 32, 64, 128)  # up to the bucket of a 100-token prompt
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("override, message", [
    ("bogus=1", "'bogus' is not a config field"),
    ("grpo.bogus=1", "no field 'grpo.bogus'"),
    ("batch_size=4", "ambiguous: use one of ['data.batch_size', 'sft.batch_size']"),
    ("grpo.num_generations=1", "sampling.num_generations=1 is invalid: expected an int >= 2"),
    ("grpo.loss_type=ppo", "grpo.loss_type='ppo' is invalid"),
    ("optimizer.learning_rate=fast", "optimizer.learning_rate='fast': expected a number"),
    ("grpo.top_p=1.5", "sampling: SamplingConfig: `top_p` must be in (0, 1], got 1.5"),
    ("sampling.greedy=true", "sampling.greedy=True would give every completion of a group the same tokens"),
    ("sampling.pad_token_id=3", "a run takes the pad token from its tokenizer"),
    ("temperature=0", "sampling: SamplingConfig: `temperature`"),
    ("run.mesh=model:8", "run.mesh='model:8' is invalid"),
    ("grpo.num_minibatches=3", "grpo.num_minibatches=3 must divide the 128 completions"),
    ("grpo.rewards=code", "the code reward needs a task with tests"),
    ("data.task=gsm8k_jsonl", "data.path=None is invalid"),
    ("beta", "is not of the form field=value"),
    ("model.attention_query_block=0", "model.attention_query_block=0 is invalid: expected a finite number > 0"),
    ("grpo.decode_phase_tokens=0", "SamplingConfig: `decode_phase_tokens`"),
    ("grpo.cast_params_once=maybe", "sampling.cast_params_once='maybe'"),
    ("sampling.decode_steps_per_check=0", "SamplingConfig: `decode_steps_per_check`"),
    ("data.truncate_side=middle", "data.truncate_side='middle' is invalid"),
    ("data.system_prompt=Be brief.", "data.system_prompt is set but data.chat_template=False"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(TrainConfig(), [override])
    assert message in str(e.value)


def test_sections_validate_on_construction():
    with pytest.raises(ConfigError, match="grpo.accuracy_reward='format' is invalid"):
        GRPOConfig(rewards=("math",), accuracy_reward="format")
    with pytest.raises(ConfigError, match="data.overlong='cut' is invalid"):
        DataConfig(overlong="cut")
    with pytest.raises(ConfigError, match="unknown field"):
        TrainConfig.from_dict({"grpo": {"betta": 0.1}})
    with pytest.raises(ConfigError, match="at most one axis may be -1"):
        parse_mesh("data:-1,fsdp:-1")


def test_recipe_files_load(tmp_path):
    recipe = tmp_path / "r.py"
    recipe.write_text("from grpo_jax.trainer import TrainConfig\n\n"
                      "def get_config():\n    return TrainConfig(name='r')\n")
    assert load_config(recipe).name == "r"
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        load_config(tmp_path / "bad.py")
    for path in sorted((ROOT / "experiments").glob("*.py")):
        assert isinstance(load_config(path), TrainConfig), path


def test_default_recipe_is_the_embedded_one():
    assert load_config(ROOT / "experiments" / "default.py") == get_config()


def test_cli_rejects_bad_config_before_building_anything():
    proc = subprocess.run([sys.executable, "-m", "grpo_jax.cli", "train", "grpo.beta=-1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "grpo-jax: error: grpo.beta=-1.0 is invalid: expected a finite number >= 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_default_run_builds_and_steps(tmp_path):
    """The embedded default, shortened to 2 SFT steps and 2 GRPO steps (the full run is in the README)."""
    from grpo_jax.metrics import read_metrics
    from grpo_jax.trainer import train

    config = apply_overrides(get_config(), ["sft.steps=2", "max_steps=2", "data.num_examples=2000", "progress=false",
                                            "data.eval_examples=64", "num_iterations=2"])
    last = train(config, output_dir=str(tmp_path))
    assert 0.0 <= last["eval/accuracy"] <= 1.0 and last["compile/new"] == 0
    assert [r["step"] for r in read_metrics(tmp_path / "sft")] == [0, 1, 2]
    assert (tmp_path / "curves.png").exists() and (tmp_path / "checkpoints").is_dir()


def test_mesh_presets_and_shapes_checked_before_anything_compiles():
    from grpo_jax import compilation, sampling
    from grpo_jax.trainer import build_context
    from grpo_jax.trainer.config import parse_mesh
    from grpo_jax.trainer.step import compile_counts

    assert parse_mesh("dp") == {"data": -1} and parse_mesh("fsdp_tp2") == {"fsdp": -1, "tensor": 2}
    before = (sampling.compile_count(), compile_counts(), compilation.counts())  # the last: any jitted function
    for overrides, message in ((["run.mesh=fsdp:3"], "mesh {'fsdp': 3} needs 3 devices but 8 are available"),
                               (["run.mesh=fsdp:-1,tensor:3"],
                                "8 devices are not divisible by the fixed axes' product 3"),
                               (["run.mesh=fsdp:-1", "run.dcn_mesh=data:2"],
                                "dcn {'data': 2} needs 2 slices but the devices form 1 slice(s) by slice_index "
                                "and 1 host process(es)")):
        with pytest.raises(ValueError, match=re.escape(message)):
            build_context(apply_overrides(TrainConfig(), overrides), "/tmp/unused")
    assert (sampling.compile_count(), compile_counts(), compilation.counts()) == before


def test_truncated_prompts_keep_their_end(tmp_path):
    """data.overlong=truncate cuts the start of a task's prompt by default: a question ends with what it asks,
    and keeping its start (the only behaviour before data.truncate_side) dropped that."""
    from hf_checkpoints import make_tokenizer

    from grpo_jax.models import load_tokenizer
    from grpo_jax.trainer import rollout
    from grpo_jax.trainer.context import RunContext

    make_tokenizer(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    question = ("Tom has 3 apples and buys 4 more apples at the store on Monday. Then he eats 2 apples. "
                "How many apples does Tom have now?")

    def render(example):
        return rollout.prompt_text_of(tokenizer, example, chat_template=False, system_prompt=None, suffix="")

    assert TrainConfig().data.truncate_side == "left"
    for side, kept in (("left", "have now?"), ("right", "Tom has 3")):
        config = apply_overrides(TrainConfig(), [f"model.path={tmp_path}", "data.max_prompt_length=40",
                                                 "data.overlong=truncate", f"data.truncate_side={side}"])
        ctx = RunContext(config=config, output_dir=str(tmp_path), mesh=None, model=None, tokenizer=tokenizer,
                         sampling=None, train_examples=[{"prompt": question}], eval_examples=[], specs=(),
                         render=render, add_special_tokens=True)
        stream = ctx.prompt_stream(batch_size=1, seed=0)
        prompt = stream.next_batch()[0]["prompt"]
        assert kept in prompt and len(prompt) < len(question) and stream.stats["truncated"] == 1, (side, prompt)
