"""The config's sections: sampling has one home (SamplingConfig, with TRL's names as aliases), and every
section's docstring documents exactly its fields."""

import dataclasses
import inspect
import re

import pytest

from grpo_jax.sampling import SamplingConfig, same_tokens_fields
from grpo_jax.trainer import ConfigError, TrainConfig, apply_overrides
from grpo_jax.trainer.config import ALIASES, SECTIONS

IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")


def documented_names(cls) -> list[str]:
    """The names a section's docstring documents: the ``name:`` / ``a / b:`` / ``a, b:`` heads of its entries
    (lines at the docstring's own indentation, after the summary), also after a sentence inside an entry
    ("... (0 = off). max_grad_norm: ...")."""
    names = []
    for line in inspect.getdoc(cls).splitlines()[1:]:
        if not line or line.startswith(" "):
            continue
        for head in re.findall(r"(?:^|\. )([a-z][a-z0-9_ ,/]*?):", line):
            parts = [p.strip() for p in re.split(r"/|,| and ", head)]
            if all(IDENTIFIER.fullmatch(p) for p in parts):
                names += parts
    return names


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_docstring_documents_exactly_the_fields(section):
    cls = SECTIONS[section]
    fields = [f.name for f in dataclasses.fields(cls)]
    doc = inspect.getdoc(cls)
    undocumented = [name for name in fields if not re.search(rf"\b{name}\b", doc)]
    assert not undocumented, f"{cls.__name__}'s docstring does not mention {undocumented}"
    not_fields = sorted(set(documented_names(cls)) - set(fields))
    assert not not_fields, f"{cls.__name__}'s docstring documents {not_fields}, which are not its fields"


def test_the_docstring_check_catches_a_name_that_is_not_a_field():
    @dataclasses.dataclass
    class Section:
        """A section.

        epsilon / epsilon_high: the clip range.
        stop_strings_as_eos: not supported.
        """

        epsilon: float = 0.2
        epsilon_high: float = 0.2

    assert documented_names(Section) == ["epsilon", "epsilon_high", "stop_strings_as_eos"]


def test_sampling_is_one_section_and_trl_names_are_aliases():
    config = apply_overrides(TrainConfig(), ["grpo.temperature=0.7", "max_completion_length=12",
                                             "grpo.num_generations=4", "sampling.top_k=5",
                                             "grpo.extra_eos_token_ids=3,4", "top_p=0.9"])
    assert config.sampling == dataclasses.replace(SamplingConfig(), temperature=0.7, max_new_tokens=12,
                                                  num_generations=4, top_k=5, eos_token_ids=(3, 4), top_p=0.9)
    assert "temperature" not in {f.name for f in dataclasses.fields(type(config.grpo))}
    for alias, target in ALIASES.items():  # every alias names a real field of the sampling section
        section, _, field = target.partition(".")
        assert section == "sampling" and field in {f.name for f in dataclasses.fields(SamplingConfig)}, alias


def test_a_config_file_with_trl_names_in_grpo_still_loads():
    """config.json files written before the sampling section existed keep the sampler's settings in grpo."""
    values = TrainConfig().to_dict()
    del values["sampling"]
    values["grpo"].update(num_generations=4, max_completion_length=8, temperature=0.5, decode_steps_per_check=2)
    config = TrainConfig.from_dict(values)
    assert (config.sampling.num_generations, config.sampling.max_new_tokens, config.sampling.temperature,
            config.sampling.decode_steps_per_check) == (4, 8, 0.5, 2)
    values["sampling"] = {"temperature": 0.5}  # the same value twice is one setting
    assert TrainConfig.from_dict(values).sampling.temperature == 0.5
    values["sampling"] = {"temperature": 0.9}
    with pytest.raises(ConfigError, match=r"grpo.temperature=0.5 and sampling.temperature=0.9 are the same setting"):
        TrainConfig.from_dict(values)


def test_sampler_run_time_fields_are_marked_as_keeping_the_tokens():
    assert same_tokens_fields() == ("decode_phase_tokens", "cast_params_once", "gather_params_once",
                                    "decode_steps_per_check")
