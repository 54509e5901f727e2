"""The tokenizer is transformers' AutoTokenizer from the checkpoint directory; prompts may use its chat template."""

import pytest
from hf_checkpoints import make_tokenizer

from grpo_jax.models import load_tokenizer, render_prompt


def test_load_and_render_with_chat_template(tmp_path):
    make_tokenizer(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|end|>"
    text = render_prompt(tokenizer, "What is 2 + 2?", chat_template=True, system="Think step by step.")
    assert text == "<|system|>Think step by step.<|end|><|user|>What is 2 + 2?<|end|><|assistant|>"
    assert render_prompt(tokenizer, "What is 2 + 2?", chat_template=False) == "What is 2 + 2?"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "2 + 2?"}]
    assert render_prompt(tokenizer, messages, chat_template=True) == (
        "<|user|>Hi<|end|><|assistant|>Hello<|end|><|user|>2 + 2?<|end|><|assistant|>"
    )
    with pytest.raises(ValueError, match="chat-message prompts need the chat template"):
        render_prompt(tokenizer, messages, chat_template=False)
    # a configured system prompt replaces the task's own (two system turns are an error in some templates)
    own = [{"role": "system", "content": "Use boxed."}, {"role": "user", "content": "2 + 2?"}]
    assert render_prompt(tokenizer, own, chat_template=True, system="Think.") == (
        "<|system|>Think.<|end|><|user|>2 + 2?<|end|><|assistant|>")
    assert render_prompt(tokenizer, own, chat_template=True).startswith("<|system|>Use boxed.<|end|>")
    batch = tokenizer(["What is 2 + 2?", "Think"], padding=True)
    assert batch["attention_mask"][1][0] == 0 and batch["attention_mask"][1][-1] == 1  # left padded
    assert tokenizer.decode(tokenizer("What is 2 + 2?")["input_ids"]) == "What is 2 + 2?"


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer vocabulary"):
        load_tokenizer(tmp_path)
    # a qwen2 model's directory without tokenizer files: transformers would build an empty default tokenizer
    # from config.json's model_type, and every prompt would encode to nothing
    (tmp_path / "qwen2").mkdir()
    (tmp_path / "qwen2" / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(FileNotFoundError, match=r"no tokenizer vocabulary in .*qwen2.*expected one of tokenizer.json"):
        load_tokenizer(tmp_path / "qwen2")
    make_tokenizer(tmp_path / "plain", chat_template=None)
    with pytest.raises(ValueError, match="asks for the chat template but this tokenizer has none"):
        render_prompt(load_tokenizer(tmp_path / "plain"), "hi", chat_template=True)
