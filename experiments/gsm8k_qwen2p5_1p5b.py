"""GSM8K with Qwen2.5-1.5B-Instruct: the 0.5B recipe with the bigger model and a tensor-parallel axis.

  grpo-jax train --config experiments/gsm8k_qwen2p5_1p5b.py model.path=/path/to/Qwen2.5-1.5B-Instruct \\
      data.path=/path/to/gsm8k/train.jsonl
"""

import dataclasses
import os

from grpo_jax.trainer import load_config


def get_config():
    base = load_config(os.path.join(os.path.dirname(__file__), "gsm8k_qwen2p5_0p5b.py"))
    return dataclasses.replace(
        base, name="gsm8k-qwen2.5-1.5b",
        model=dataclasses.replace(base.model, path="checkpoints/Qwen2.5-1.5B-Instruct"),
        run=dataclasses.replace(base.run, mesh="fsdp:-1,tensor:2"),
    )
