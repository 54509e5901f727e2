"""Config input a new user gets wrong: every float setting refuses inf as it refuses nan, and a recipe file that
is not valid Python (or imports a module that is not installed) is one error line naming the file and line."""

import dataclasses
import typing

import pytest
from cli_runs import error_line

from grpo_jax.cli import main
from grpo_jax.trainer.config import SECTIONS, ConfigError, TrainConfig, _is_optional, apply_overrides


def _float_fields() -> list[str]:
    """Every float field (or tuple of floats) of every section, so that one added later is covered too."""
    out = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            inner = _is_optional(hints[field.name])[1]
            if inner is float or (typing.get_origin(inner) is tuple and typing.get_args(inner)[0] is float):
                out.append(f"{section}.{field.name}")
    return out


def test_the_float_fields_are_found():
    fields = _float_fields()
    assert {"optimizer.learning_rate", "grpo.beta", "sampling.temperature", "grpo.reward_weights"} <= set(fields)
    assert len(fields) >= 14


@pytest.mark.parametrize("field", _float_fields())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_field_refuses_nonfinite_values(field, value):
    overrides = [f"{field}={value}"]
    if field == "grpo.reward_weights":  # one weight per reward
        overrides = ["grpo.rewards=math,format", f"{field}=1,{value}"]
    with pytest.raises(ConfigError) as e:
        apply_overrides(TrainConfig(), overrides)
    section, name = field.split(".")
    # "optimizer.learning_rate=inf is invalid: ..."; the sampler's own check: "sampling: ... `top_p` must ..."
    assert str(e.value).startswith((f"{field}=", f"{section}: SamplingConfig: `{name}` must")), str(e.value)


def test_a_recipe_value_of_inf_is_refused_too():
    config = TrainConfig().to_dict()
    config["optimizer"]["learning_rate"] = float("inf")
    with pytest.raises(ConfigError, match=r"optimizer.learning_rate=inf is invalid: expected a finite number"):
        TrainConfig.from_dict(config)


def test_learning_rate_inf_on_the_command_line_exits_2(capsys):
    assert main(["train", "optimizer.learning_rate=inf"]) == 2
    assert error_line(capsys) == "grpo-jax: error: optimizer.learning_rate=inf is invalid: expected a finite number"


@pytest.mark.parametrize("source, message", [
    ("def get_config(:\n    pass\n",
     "is not valid Python: invalid syntax ({path}, line 1, column 16): 'def get_config(:'"),
    ("def get_config():\n    x = 1\n        return x\n",
     "is not valid Python: unexpected indent ({path}, line 3, column 8): 'return x'"),
    ("import os\nimport not_a_module_anyone_has\n",
     "{path}', line 2: ModuleNotFoundError: No module named 'not_a_module_anyone_has'"),
])
def test_a_broken_recipe_is_one_line_naming_file_and_line(tmp_path, capsys, source, message):
    recipe = tmp_path / "recipe.py"
    recipe.write_text(source)
    assert main(["train", "--config", str(recipe), f"--output-dir={tmp_path / 'run'}"]) == 2
    assert message.format(path=recipe) in error_line(capsys)
    assert not (tmp_path / "run").exists()
