"""GSM8K with Qwen2.5-1.5B-Instruct: the 0.5B recipe with the bigger model and a tensor-parallel axis.

  grpo-jax train --config experiments/gsm8k_qwen2p5_1p5b.py model.path=/path/to/Qwen2.5-1.5B-Instruct \\
      data.path=/path/to/gsm8k/train.jsonl
"""

import dataclasses
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "gsm8k_qwen2p5_0p5b", os.path.join(os.path.dirname(__file__), "gsm8k_qwen2p5_0p5b.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
    base = _base.get_config()
    return dataclasses.replace(
        base, name="gsm8k-qwen2.5-1.5b",
        model=dataclasses.replace(base.model, path="checkpoints/Qwen2.5-1.5B-Instruct"),
        run=dataclasses.replace(base.run, mesh="fsdp:-1,tensor:2"),
    )
