"""Tiny random-init Hugging Face checkpoints for tests, made with transformers' PyTorch classes.

Every weight is re-drawn (norm scales around 1, biases non-zero) so that no parity test can pass because
a component happens to be initialised to an identity or to zero. Nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, max_position_embeddings=256,
            rms_norm_eps=1e-6)

# name -> (model_type, config overrides); covers tied/untied, MHA and GQA ratios 2 and 4, rope scaling,
# Qwen2 biases, Qwen3 q/k norm with head_dim != hidden / heads.
FAMILIES = {
    "llama_gqa2_untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama3_scaled_mqa_tied": ("llama", dict(
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=64))),
    "qwen2_bias_tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                      rope_parameters=dict(rope_type="default", rope_theta=1000000.0))),
    "qwen3_qknorm_gqa4": ("qwen3", dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                                        tie_word_embeddings=False)),
    "qwen3_mha_tied": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=4, head_dim=8,
                                     tie_word_embeddings=True)),
}


def hf_config(family: str, **overrides):
    from transformers import AutoConfig

    model_type, options = FAMILIES[family]
    return AutoConfig.for_model(model_type, **{**TINY, **options, **overrides})


def make_checkpoint(path: str | os.PathLike, family: str, *, seed: int = 0, **overrides):
    """Write a random-init checkpoint of ``family`` to ``path``; returns the PyTorch model (eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(family, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(os.fspath(path))
    return model


def torch_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """transformers' logits [B, T, V] (float32) for the given ids; positions derived from the mask."""
    import torch

    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    kwargs = {}
    if attention_mask is not None:
        mask = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
        kwargs = dict(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits.float().numpy()


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(path, *, chat_template=CHAT_TEMPLATE, with_eos=True):
    """A real (tiny) BPE tokenizer trained here on a few sentences, saved as Hugging Face files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|end|>", "<|user|>", "<|system|>", "<|assistant|>"] if with_eos else ["<|pad|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["What is 2 + 2? The answer is 4.", "Think step by step."] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>" if with_eos else None)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return fast
