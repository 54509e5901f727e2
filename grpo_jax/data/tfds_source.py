"""GSM8K from a prepared tensorflow-datasets ``gsm8k`` dataset, read without TensorFlow.

tensorflow-datasets (tfds) has two ways to read a prepared dataset: ``tfds.load`` builds a
``tf.data.Dataset`` and needs TensorFlow; ``tfds.data_source`` opens the prepared files for random
access and hands back plain numpy/bytes records. The second path needs only ``array_record`` (the
file format) and tfds' own numpy decoding of the features, so it works with TensorFlow absent. This
module takes it: ``load_gsm8k_tfds`` opens the ``gsm8k`` builder's prepared files under ``data_dir``
(``{data_dir}/gsm8k/1.0.0/``: ``dataset_info.json``, ``features.json``, ``gsm8k-{split}.array_record-*``
shards) with ``tfds.builder("gsm8k", data_dir=...).as_data_source(split)`` (what
``tfds.data_source(..., download=False)`` does, with a check in between that tells "not prepared" and
"prepared in another file format" apart), decodes the bytes, and turns each record into the same
Example as ``load_gsm8k_jsonl`` (``gsm8k_example``).

Nothing is downloaded: the dataset must already be prepared in the ``array_record`` file format, once,
on a machine with network access (see ``PREPARE_HINT``). The builder's splits are ``train``, ``test``,
``train_socratic`` and ``test_socratic``; tfds split slices such as ``"train[:100]"`` or
``"train+test"`` work too. Examples come in the order of the prepared files: tfds' deterministic
shuffle of the source order, the same wherever the same data was prepared.

tfds is imported inside the call, so importing this module (or ``grpo_jax.data``) stays cheap.
"""

from __future__ import annotations

import os

from grpo_jax.data.example import Example
from grpo_jax.data.jsonl import DataFormatError, gsm8k_example
from grpo_jax.errors import ConfigError, InputNotFoundError

DATASET = "gsm8k"
FILE_FORMAT = "array_record"

PREPARE_HINT = (
    "Prepare it once on a machine with network access, in the array_record format, and copy the "
    "data_dir's `gsm8k/` folder here: `tfds build gsm8k --data_dir=DATA_DIR --file_format=array_record` "
    "(the tfds command line needs TensorFlow), or without TensorFlow in Python: "
    "`from tensorflow_datasets.text.gsm8k import Gsm8k; "
    "Gsm8k(data_dir=DATA_DIR, file_format='array_record').download_and_prepare()` "
    "(tensorflow-datasets 4.9.10 also needs `pip install importlib_resources` for that)."
)


def _describe(data_dir: str | os.PathLike | None) -> str:
    if data_dir is None:
        return "data_dir=None (tfds' default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)"
    return f"data_dir={os.fspath(data_dir)!r}"


def _text(record: dict, key: str, where: str) -> str:
    """Field ``key`` of a tfds record (a tfds ``Text`` feature reads as UTF-8 bytes) as str."""
    if key not in record:
        raise DataFormatError(f"{where}: missing feature {key!r}; got features {sorted(record)}")
    value = record[key]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise DataFormatError(f"{where}: feature {key!r} must be text (bytes or str), got {type(value).__name__}")


def load_gsm8k_tfds(split: str = "train", *, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """All examples of one split of a prepared tfds ``gsm8k`` dataset, read without TensorFlow.

    Args:
        split (str): a split of the tfds ``gsm8k`` builder (``"train"``, ``"test"``,
            ``"train_socratic"``, ``"test_socratic"``) or a tfds split expression on them
            (``"train[:100]"``, ``"train+test"``).
        data_dir (str | os.PathLike | None): the tfds data directory holding ``gsm8k/<version>/``;
            None for tfds' default (``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``).

    Returns:
        list[Example]: ``{"prompt", "question", "answer" (full solution), "final_answer"}`` per problem,
        exactly as ``load_gsm8k_jsonl`` gives for the same records, in the prepared files' order.

    Raises:
        TypeError: ``split`` is not a str.
        FileNotFoundError: no prepared ``gsm8k`` dataset under ``data_dir`` (the message says how to
            prepare one).
        ValueError: the dataset is prepared in another file format than array_record, or ``split`` is
            not one of its splits.
        DataFormatError: a record's answer does not end in ``#### <number>``.
    """
    if not isinstance(split, str):
        raise TypeError(f"load_gsm8k_tfds: `split` must be a str such as 'train', got {type(split).__name__}")
    import tensorflow_datasets as tfds  # here, not at module import: tfds takes a while to import

    where = f"load_gsm8k_tfds(split={split!r}, {_describe(data_dir)})"
    try:
        builder = tfds.builder(DATASET, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        builder = None
    if builder is None or not builder.is_prepared():
        raise InputNotFoundError(f"{where}: no prepared tfds {DATASET!r} dataset under that data_dir. {PREPARE_HINT}")
    file_format = builder.info.file_format
    if file_format is None or file_format.value != FILE_FORMAT:
        found = None if file_format is None else file_format.value
        raise ConfigError(
            f"{where}: the {DATASET!r} dataset in {os.fspath(builder.data_dir)} is prepared in file format "
            f"{found!r}; reading without TensorFlow needs {FILE_FORMAT!r}. {PREPARE_HINT}"
        )
    try:
        source = builder.as_data_source(split=split)
    except ValueError as e:
        raise ConfigError(
            f"{where}: `split` must name splits of the prepared dataset {sorted(builder.info.splits)} "
            f"(slices such as 'train[:100]' and unions such as 'train+test' allowed); tfds says: {e}"
        ) from None
    examples = []
    for index, record in enumerate(source):
        record_where = f"{where}, record {index}"
        fields = {key: _text(record, key, record_where) for key in ("question", "answer")}
        examples.append(gsm8k_example(fields, where=record_where))
    return examples
