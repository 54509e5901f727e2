"""GSM8K with Qwen2.5-1.5B-Instruct on GPUs: one host with 8 GPUs, or several such hosts.

One host (8 × H100): FSDP over the 8 GPUs, bf16 compute, fp32 master weights and AdamW state.

  pip install ".[gpu]"
  grpo-jax train --config experiments/gsm8k_multigpu.py --output-dir runs/gsm8k-8gpu \\
      model.path=/weights/Qwen2.5-1.5B-Instruct data.path=/data/gsm8k/train.jsonl

Several hosts (here 2 × 8 GPUs): the same command on every host, plus where process 0 listens, how many
processes there are and which one this is (or the GRPO_JAX_* environment variables); the data axis goes
across hosts (DCN), FSDP within a host (NVLink), and --output-dir must be a path every host sees:

  grpo-jax train --config experiments/gsm8k_multigpu.py --output-dir /shared/runs/gsm8k-16gpu \\
      --coordinator-address host0:12345 --num-processes 2 --process-id $RANK \\
      run.dcn_mesh=data:2 model.path=/weights/Qwen2.5-1.5B-Instruct data.path=/data/gsm8k/train.jsonl
"""

import dataclasses
import os

from grpo_jax.trainer import load_config


def get_config():
    base = load_config(os.path.join(os.path.dirname(__file__), "gsm8k_qwen2p5_1p5b.py"))
    return dataclasses.replace(
        base, name="gsm8k-multigpu",
        sampling=dataclasses.replace(base.sampling, num_generations=16),
        data=dataclasses.replace(base.data, batch_size=32),
        run=dataclasses.replace(base.run, mesh="fsdp:-1"),
    )
