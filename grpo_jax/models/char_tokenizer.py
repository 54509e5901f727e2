"""A character-level tokenizer for models trained from scratch on small procedural tasks.

``build_char_tokenizer(alphabet)`` returns a transformers ``PreTrainedTokenizerFast`` (in transformers 5
that name is an alias of ``TokenizersBackend``) in which every character of ``alphabet`` is one token,
so a prompt such as ``"12 + 7 = ?"`` is ten tokens and the answer ``"19"`` two. Ids are fixed:

    ====  =========  ==============================================================
    id    token      use
    ====  =========  ==============================================================
    0     ``<pad>``  padding (``pad_token``); padding is on the left
    1     ``<bos>``  beginning of sequence (``bos_token``); never added automatically
    2     ``<eos>``  end of sequence (``eos_token``); never added automatically
    3     ``<unk>``  any character that is not in the alphabet (``unk_token``)
    4...  the alphabet's characters, in order of first appearance (duplicates dropped)
    ====  =========  ==============================================================

Encoding adds no special tokens, and there is no normalization and no whitespace handling: each
Unicode code point of the text is looked up on its own (a precomposed ``"é"`` and ``"e"`` followed by a
combining accent are different), and decoding concatenates the tokens with nothing in between, so
``decode(encode(s)) == s`` exactly for every string ``s`` written in the alphabet, spaces and newlines
included. Outside the alphabet the round trip is lossy: each unknown character becomes ``<unk>``, which
decodes as the text ``"<unk>"`` (or as nothing with ``skip_special_tokens=True``, which drops every
special token: pad, bos, eos and unk). Like every Hugging Face tokenizer, the literal text of a special
token in the input (``"<eos>"``) is read as that token; ``build_char_tokenizer`` therefore refuses an
alphabet in which such a text could be written (one holding every character of ``<pad>``, ``<bos>``,
``<eos>`` or ``<unk>``).

With ``path`` the tokenizer is also saved there (``tokenizer.json`` and ``tokenizer_config.json``), and
``grpo_jax.models.load_tokenizer(path)`` loads it back with the same ids, special tokens and padding.
"""

from __future__ import annotations

import os

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
"""The special tokens in id order: ``SPECIAL_TOKENS[i]`` has id ``i``."""

PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))
FIRST_CHAR_ID = len(SPECIAL_TOKENS)
"""The id of the alphabet's first character; character ``k`` of the (deduplicated) alphabet has id 4 + k."""

ARITHMETIC_ALPHABET = "0123456789+-*/=? "
"""Every character of grpo_jax.data's arithmetic prompts (``"12 + 7 = ?"``) and answers (``"-5"``)."""

DEFAULT_MODEL_MAX_LENGTH = 1024
"""Characters a prompt plus completion may span; far beyond what the procedural tasks produce."""


def _check_alphabet(alphabet: str) -> str:
    """The alphabet's characters, deduplicated in order of first appearance, or an error naming the problem."""
    if not isinstance(alphabet, str):
        raise TypeError(f"build_char_tokenizer: `alphabet` must be a str of characters, got {type(alphabet).__name__}")
    chars = "".join(dict.fromkeys(alphabet))
    if not chars:
        raise ValueError("build_char_tokenizer: `alphabet` is empty; it needs at least one character")
    surrogates = [c for c in chars if "\ud800" <= c <= "\udfff"]
    if surrogates:
        raise ValueError(
            f"build_char_tokenizer: `alphabet` contains lone surrogate code point(s) {surrogates!r}, "
            "which are not valid text (they cannot be encoded as UTF-8)"
        )
    for token in SPECIAL_TOKENS:
        if set(token) <= set(chars):
            raise ValueError(
                f"build_char_tokenizer: `alphabet` contains every character of the special token {token!r} "
                f"({', '.join(repr(c) for c in dict.fromkeys(token))}), so text written in it could spell "
                f"{token!r} and would be read as that special token; drop one of those characters"
            )
    return chars


def build_char_tokenizer(alphabet: str, *, path: str | os.PathLike | None = None,
                         model_max_length: int = DEFAULT_MODEL_MAX_LENGTH):
    """A character-level ``PreTrainedTokenizerFast`` over ``alphabet`` (see the module docstring for the ids).

    Args:
      alphabet: the characters, one token each; duplicates are dropped (first occurrence wins), so
        character ``k`` of the deduplicated alphabet has id ``FIRST_CHAR_ID + k`` (4 + k).
      path: if given, the tokenizer is saved to this directory (created if needed) with
        ``save_pretrained``, loadable with ``grpo_jax.models.load_tokenizer(path)`` or
        ``AutoTokenizer.from_pretrained(path)``.
      model_max_length: the tokenizer's ``model_max_length`` (truncation limit, length warnings).

    Returns:
      The tokenizer: padding on the left with ``<pad>`` (id 0), ``bos``/``eos``/``unk`` tokens set, no
      special tokens added on encoding, no spaces added or cleaned up on decoding.

    Raises:
      TypeError: ``alphabet`` is not a str.
      ValueError: the alphabet is empty, contains lone surrogates, or could spell a special token;
        ``model_max_length`` is not a positive int.
    """
    chars = _check_alphabet(alphabet)
    if not isinstance(model_max_length, int) or isinstance(model_max_length, bool) or model_max_length < 1:
        raise ValueError(f"build_char_tokenizer: `model_max_length` must be an int >= 1, got {model_max_length!r}")

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({c: FIRST_CHAR_ID + k for k, c in enumerate(chars)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Every code point is its own pre-token ("[\s\S]": newlines too); WordLevel then maps each one to its id.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # concatenate the tokens as they are: no spaces in between
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        model_max_length=model_max_length,
        # Written to tokenizer_config.json: " ?" must stay " ?" whatever a transformers version defaults to.
        clean_up_tokenization_spaces=False,
    )
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):  # the ids are a documented contract; fail loudly if not kept
        raise RuntimeError(f"build_char_tokenizer: special token ids {ids} are not {list(range(len(SPECIAL_TOKENS)))}")
    if path is not None:
        tokenizer.save_pretrained(os.fspath(path))
    return tokenizer
