"""The GRPO step workload that grpo_jax, TRL and Tunix run side by side (issue 8).

Everything the three workers share lives here, so they run the same work: the checkpoint (a random-init
Qwen2-architecture model saved as Hugging Face safetensors with a word-level tokenizer), the prompts, the
reward and the hyper-parameters. This module imports only the standard library at top level, so every
worker's virtual environment can import it (``sys.path`` gets ``benchmarks/peers``).

Word-level tokenizer: token i >= 2 is the word "w<i>", so a prompt of 32 words is exactly 32 tokens in
every framework, and a completion decodes to words the reward can read. Token 0 is the pad, 1 is EOS;
completions run the full 128 new tokens (EOS is never a stop: TRL gets ``min_new_tokens``, grpo_jax an
empty stop set, Tunix whatever its sampler offers; workers record how many tokens they generated).

Result schema (one JSON object, a worker's last stdout line and its ``--out`` file):

  framework      "grpo_jax" | "trl" | "tunix"
  size           "small" | "medium"
  parameters     number of model parameters
  steps          [{"step_s", "generation_s", "reward_s", "logprobs_s", "update_s", "generated_tokens"}, ...]
                 for each timed step; logprobs_s = reference (and old-policy, when recomputed) log-probs;
                 a phase a framework does not separate is null and included in step_s
  first_step_s   the first (untimed) step, compile / warm-up included
  setup_s        loading the model and building the trainer
  peak_rss_mb    the worker's peak resident memory
  notes          free text: anything the worker had to do differently
"""

from __future__ import annotations

import json
import os
import random

SIZES = {  # Qwen2 architecture, tied embeddings (as benchmarks/bench_sampling.py)
    "small": dict(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=2),
    "medium": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                   num_attention_heads=12, num_key_value_heads=4),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),  # for checking the code paths quickly
}
PROMPTS_PER_STEP = 16
NUM_GENERATIONS = 8  # G
PROMPT_WORDS = 32
MAX_NEW_TOKENS = 128
BETA = 0.04
EPSILON = 0.2
TEMPERATURE = 1.0
NUM_ITERATIONS = 1  # mu
LEARNING_RATE = 1e-6
ADAM_BETAS = (0.9, 0.99)
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0
PAD_ID, EOS_ID = 0, 1


def word(i: int) -> str:
    return f"w{i}"


def make_checkpoint(path: str, size: str, seed: int = 0) -> int:
    """A random-init Qwen2 checkpoint (safetensors, config.json) at ``path``, its word-level tokenizer in
    ``tokenizer_dir(path)``;
    returns the parameter count. Needs torch and transformers (the orchestrator's environment)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    shape = SIZES[size]
    vocab = {"<pad>": PAD_ID, "<eos>": EOS_ID, **{word(i): i for i in range(2, shape["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    # in its own folder for AutoTokenizer (next to a qwen2 config.json it would pick Qwen2Tokenizer, whose
    # pre-tokenizer differs), and beside the weights for grpo_jax (whose load_tokenizer keeps its class)
    fast.save_pretrained(tokenizer_dir(path))
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = AutoConfig.for_model("qwen2", tie_word_embeddings=True, max_position_embeddings=1024,
                                  bos_token_id=None, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **shape)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    return model.num_parameters()


def tokenizer_dir(checkpoint: str) -> str:
    """Where make_checkpoint saves the tokenizer (load it with AutoTokenizer.from_pretrained)."""
    return os.path.join(checkpoint, "tokenizer")


def make_prompts(vocab_size: int, steps: int, seed: int = 0) -> list[str]:
    """``steps * PROMPTS_PER_STEP`` prompts of PROMPT_WORDS random words (never pad or EOS)."""
    rng = random.Random(seed)
    return [" ".join(word(rng.randrange(2, vocab_size)) for _ in range(PROMPT_WORDS))
            for _ in range(steps * PROMPTS_PER_STEP)]


def reward(completions: list[str]) -> list[float]:
    """The rule-based reward: the fraction of a completion's words with an even id (cheap, deterministic,
    and it varies within a group, so every step has non-zero advantages)."""
    out = []
    for text in completions:
        ids = [int(w[1:]) for w in text.split() if w.startswith("w") and w[1:].isdigit()]
        out.append(sum(1 for i in ids if i % 2 == 0) / len(ids) if ids else 0.0)
    return out


def write_result(result: dict, out_path: str | None) -> None:
    """Print the result as the last stdout line and write it to ``out_path``."""
    import resource

    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = json.dumps(result)
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    print(line, flush=True)


def reward_fn(completions: list[str], **example_fields) -> list[float]:
    """``reward`` in TRL's calling convention (completions plus example columns, which it ignores)."""
    return reward(completions)
