"""The character-level tokenizer: one token per character, fixed special ids, exact round trips, saved and loaded."""

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax.data.arithmetic import ArithmeticConfig, arithmetic_example
from grpo_jax.models import load_tokenizer
from grpo_jax.models.char_tokenizer import (
    ARITHMETIC_ALPHABET,
    BOS_ID,
    EOS_ID,
    FIRST_CHAR_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    build_char_tokenizer,
)

_ARITHMETIC = build_char_tokenizer(ARITHMETIC_ALPHABET)


@pytest.fixture(scope="module")
def tok():
    return _ARITHMETIC


def char_id(c):
    return FIRST_CHAR_ID + ARITHMETIC_ALPHABET.index(c)


def test_fixed_ids_and_settings(tok):
    assert SPECIAL_TOKENS == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID, FIRST_CHAR_ID) == (0, 1, 2, 3, 4)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == SPECIAL_TOKENS
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"
    assert tok.model_max_length == 1024
    assert len(tok) == 4 + len(ARITHMETIC_ALPHABET) == 21
    vocab = tok.get_vocab()
    assert vocab == {**{t: i for i, t in enumerate(SPECIAL_TOKENS)},
                     **{c: 4 + k for k, c in enumerate(ARITHMETIC_ALPHABET)}}
    assert sorted(tok.all_special_ids) == [0, 1, 2, 3]


def test_exact_ids_for_a_known_string(tok):
    # "0123456789+-*/=? " -> ids 4..20: '1'=5 '2'=6 ' '=20 '+'=14 '7'=11 '='=18 '?'=19
    enc = tok("12 + 7 = ?")
    assert enc["input_ids"] == [5, 6, 20, 14, 20, 11, 20, 18, 20, 19]
    assert enc["attention_mask"] == [1] * 10
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == list("12 + 7 = ?")
    assert tok("19")["input_ids"] == [char_id("1"), char_id("9")] == [5, 13]
    assert tok("")["input_ids"] == []
    assert tok.encode("-3", add_special_tokens=True) == [15, 7]  # nothing is ever added


@pytest.mark.parametrize("text", [
    "12 + 7 = ?", "19", "-12", " ", "   ", " 1 ", "1  +  2", "?", " ?", "= ?", "8 / 4 = ?", "3 * -2 = ?",
    "", "0123456789+-*/=? ", "??==  --",
])
def test_round_trip_is_exact(tok, text):
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=ARITHMETIC_ALPHABET, max_size=40))
def test_round_trip_property(text):
    tok = _ARITHMETIC  # built once: hypothesis does not mix with function-scoped fixtures
    ids = tok(text)["input_ids"]
    assert ids == [char_id(c) for c in text]
    assert tok.decode(ids) == text


def test_round_trip_on_the_arithmetic_task(tok):
    config = ArithmeticConfig.from_difficulty(5)
    for i in range(50):
        ex = arithmetic_example(i, seed=3, config=config)
        for text in (ex["prompt"], ex["answer"], ex["prompt"] + " " + ex["answer"]):
            assert tok.decode(tok(text)["input_ids"]) == text
            assert UNK_ID not in tok(text)["input_ids"]


def test_whitespace_and_unicode_alphabet_round_trip():
    alphabet = "ab \n\téü€🙂\x00"
    tok = build_char_tokenizer(alphabet)
    rng = random.Random(0)
    for _ in range(100):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        ids = tok(text)["input_ids"]
        assert ids == [4 + alphabet.index(c) for c in text]
        assert tok.decode(ids) == text
    assert tok.decode(tok("a\r\nb")["input_ids"]) == "a<unk>\nb"  # "\r" alone is unknown, "\n" is not


def test_unknown_characters_map_to_unk(tok):
    ids = tok("1 , x2")["input_ids"]
    assert ids == [5, 20, UNK_ID, 20, UNK_ID, 6]
    assert tok.decode(ids) == "1 <unk> <unk>2"
    assert tok.decode(ids, skip_special_tokens=True) == "1  2"
    # no normalization: "e" + combining accent is two unknown code points, never folded into anything
    assert tok("e\u0301")["input_ids"] == [UNK_ID, UNK_ID]


def test_batch_left_padding(tok):
    batch = tok(["1+1", "12 + 7 = ?", ""], padding=True)
    assert batch["input_ids"] == [
        [0, 0, 0, 0, 0, 0, 0, 5, 14, 5],
        [5, 6, 20, 14, 20, 11, 20, 18, 20, 19],
        [0] * 10,
    ]
    assert batch["attention_mask"] == [[0] * 7 + [1] * 3, [1] * 10, [0] * 10]
    arrays = tok(["7", "-12"], padding="max_length", max_length=5, return_tensors="np")
    np.testing.assert_array_equal(arrays["input_ids"], [[0, 0, 0, 0, 11], [0, 0, 15, 5, 6]])
    np.testing.assert_array_equal(arrays["attention_mask"], [[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]])


def test_decode_special_tokens(tok):
    ids = [PAD_ID, PAD_ID, BOS_ID, 5, 13, EOS_ID, PAD_ID]
    assert tok.decode(ids) == "<pad><pad><bos>19<eos><pad>"  # no spaces inserted around special tokens
    assert tok.decode(ids, skip_special_tokens=True) == "19"
    assert tok.batch_decode([[0, 0, 5, 2], [6, 20, 19, 2]], skip_special_tokens=True) == ["1", "2 ?"]
    # no "clean up" of spaces before punctuation: " ?" survives decoding
    assert tok.decode(tok(" ? = ?")["input_ids"]) == " ? = ?"
    assert tok.clean_up_tokenization_spaces is False


def test_alphabet_deduplicated_in_order():
    tok = build_char_tokenizer("baab c")
    assert tok.get_vocab() == {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, "b": 4, "a": 5, " ": 6, "c": 7}
    assert tok("cab")["input_ids"] == [7, 5, 4]


def test_save_and_load_tokenizer(tmp_path):
    built = build_char_tokenizer(ARITHMETIC_ALPHABET, path=tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["padding_side"] == "left" and config["pad_token"] == "<pad>" and config["eos_token"] == "<eos>"
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.padding_side == "left"
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    assert loaded.pad_token == "<pad>"  # its own pad token, not eos standing in for it
    assert loaded.get_vocab() == built.get_vocab()
    assert loaded.model_max_length == built.model_max_length
    texts = ["12 + 7 = ?", "19", " ", "1 , x2", "", "-3 * 4 = ?"]
    for a, b in zip(built(texts, padding=True)["input_ids"], loaded(texts, padding=True)["input_ids"], strict=True):
        assert a == b
    assert built(texts, padding=True)["attention_mask"] == loaded(texts, padding=True)["attention_mask"]
    ids = [0, 1, 5, 20, 3, 2]
    for skip in (False, True):
        assert loaded.decode(ids, skip_special_tokens=skip) == built.decode(ids, skip_special_tokens=skip)
    assert loaded.decode(loaded(" ? 1 ")["input_ids"]) == " ? 1 "


def test_custom_model_max_length(tmp_path):
    tok = build_char_tokenizer("ab", path=tmp_path, model_max_length=64)
    assert tok.model_max_length == 64 and load_tokenizer(tmp_path).model_max_length == 64
    assert tok("ab" * 40, truncation=True)["input_ids"] == [4, 5] * 32


@pytest.mark.parametrize("alphabet, error, match", [
    ("", ValueError, "`alphabet` is empty"),
    (None, TypeError, "`alphabet` must be a str"),
    (["a", "b"], TypeError, "`alphabet` must be a str"),
    ("<pad>", ValueError, "every character of the special token '<pad>'"),
    ("0123<>eos", ValueError, "every character of the special token '<eos>'"),
    ("<>bnosu", ValueError, "every character of the special token '<bos>'"),
    ("<>knu", ValueError, "every character of the special token '<unk>'"),
    ("a\ud800", ValueError, "lone surrogate"),
])
def test_bad_alphabets_name_the_problem(alphabet, error, match):
    with pytest.raises(error, match=match):
        build_char_tokenizer(alphabet)


def test_angle_brackets_alone_are_allowed():
    tok = build_char_tokenizer("0123456789<> ")  # cannot spell any special token
    assert tok.decode(tok("1 < 2 > 0")["input_ids"]) == "1 < 2 > 0"


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "8"])
def test_bad_model_max_length(value):
    with pytest.raises(ValueError, match="`model_max_length` must be an int >= 1"):
        build_char_tokenizer("ab", model_max_length=value)


def test_loads_as_itself_beside_a_model_config(tmp_path):
    """Next to a qwen2 config.json, AutoTokenizer would pick Qwen2Tokenizer and drop the spaces."""
    from grpo_jax.models import ModelConfig

    ModelConfig(model_type="qwen2", vocab_size=21, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                qkv_bias=True).to_hf().save_pretrained(tmp_path)
    build_char_tokenizer(ARITHMETIC_ALPHABET, path=tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded("45 + 8 = ?")["input_ids"] == [8, 9, 20, 14, 20, 12, 20, 18, 20, 19]
    assert loaded.decode(loaded("45 + 8 = ?")["input_ids"]) == "45 + 8 = ?"
