"""GSM8K and MATH-style problems from local files (JSONL, gzipped JSONL, Parquet).

* GSM8K (openai/grade-school-math ``train.jsonl`` / ``test.jsonl``): records ``{"question", "answer"}``
  where the answer is a worked solution ending in ``#### N``. Examples keep the full solution as
  ``"answer"`` (the original field) and add ``"final_answer"`` = N with thousands separators removed.
* MATH-style (hendrycks MATH, MATH-500, ...): records ``{"problem", "solution"[, "answer"]}``. Without an
  ``"answer"`` field the final answer is the content of the solution's last ``\\boxed{...}`` (braces
  balanced, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``).

In both, ``"final_answer"`` is the reference a math reward compares the completion's answer with.
Malformed records raise ``DataFormatError`` naming the file and the line (row for Parquet).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from grpo_jax.data.example import Example
from grpo_jax.errors import ConfigError, InputNotFoundError
from grpo_jax.latex import brace_group


class DataFormatError(ConfigError):
    """A record in a data file is not in the expected format; the message names file and line."""


def text_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 text file (``.gz`` decompressed; a leading byte-order mark, as
    some editors and Windows tools write, skipped). Bytes that are not UTF-8 raise DataFormatError naming the
    file, the line and the byte offset in the file (of the decompressed stream for ``.gz``), so the user can
    find them (``head -c OFFSET``)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    offset = 0
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start = 3 if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[start + e.start:start + e.end]
                raise DataFormatError(
                    f"{path}, line {lineno}: not UTF-8 text (byte {bad[:4].hex(' ')} at byte offset "
                    f"{offset + start + e.start} of the file); save the file as UTF-8") from None
            offset += len(raw)
            yield lineno, line


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line (1-based line numbers; ``.gz`` accepted).
    DataFormatError naming the file (and line) when it is not UTF-8, a line is not a JSON object, or it holds
    no record at all."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputNotFoundError(f"read_jsonl: no such file: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"read_jsonl: {path} is a directory; expected a .jsonl, .jsonl.gz or .json file")
    records = 0
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}, line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataFormatError(f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}")
        records += 1
        yield lineno, record
    if not records:
        raise DataFormatError(f"{path}: no records: the file is empty or holds only blank lines; expected one "
                              "JSON object per line")


def read_records(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, record)`` from a ``.jsonl``/``.jsonl.gz``/``.json`` (lines) or ``.parquet`` file.

    ``location`` is ``"path, line n"`` for JSONL and ``"path, row i"`` (0-based) for Parquet, for error messages.
    """
    path = os.fspath(path)
    if path.endswith(".parquet"):
        if not os.path.exists(path):
            raise InputNotFoundError(f"read_records: no such file: {path}")
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        if not rows:
            raise DataFormatError(f"{path}: no records: the Parquet file has no rows")
        for row, record in enumerate(rows):
            yield f"{path}, row {row}", record
    else:
        for lineno, record in read_jsonl(path):
            yield f"{path}, line {lineno}", record


def _require_str(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise DataFormatError(f"{where}: missing field {key!r}; got fields {sorted(record)}")
    value = record[key]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------- GSM8K

_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)")


def gsm8k_final_answer(solution: str) -> str | None:
    """The ``N`` of a GSM8K solution's trailing ``#### N``, commas removed (``"1,200"`` → ``"1200"``).

    None if there is no ``####`` marker or what follows it on its line is not a number.
    """
    if "####" not in solution:
        return None
    lines = solution.rsplit("####", 1)[1].strip().splitlines()
    answer = lines[0].strip().replace(",", "") if lines else ""
    return answer if _NUMBER.fullmatch(answer) else None


def gsm8k_example(record: dict[str, Any], *, where: str = "record") -> Example:
    """One GSM8K record → ``{"prompt", "question", "answer" (full solution), "final_answer"}``."""
    question = _require_str(record, "question", where)
    solution = _require_str(record, "answer", where)
    final = gsm8k_final_answer(solution)
    if final is None:
        raise DataFormatError(f"{where}: GSM8K 'answer' does not end with '#### <number>': {solution[-80:]!r}")
    return {"prompt": question, "question": question, "answer": solution, "final_answer": final}


def load_gsm8k_jsonl(path: str | os.PathLike) -> list[Example]:
    """All examples of a GSM8K JSONL file (the original ``train.jsonl``/``test.jsonl`` format)."""
    return [gsm8k_example(record, where=where) for where, record in read_records(path)]


# ----------------------------------------------------------------------------------------------- MATH

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, braces balanced; else None.

    ``\boxed 5`` (no braces, as in some MATH solutions) gives ``"5"``. An unclosed brace gives None.
    """
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        rest = text[start:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            content = brace_group(text, start + (len(rest) - len(stripped)))
            return None if content is None else content.strip()
        if rest.startswith(" "):
            match = re.match(r"\s*([^\s$]+)", rest)
            if match:
                return match.group(1)
    return None


def math_example(record: dict[str, Any], *, where: str = "record") -> Example:
    """One MATH-style record → ``{"prompt", "problem", "solution", "answer", "final_answer", ...}``.

    ``"answer"`` is the record's own answer field when present (non-empty string), else the last
    ``\\boxed{...}`` of the solution. Other fields of the record (``level``, ``type``, ``unique_id``, ...)
    are kept unchanged.
    """
    problem = _require_str(record, "problem", where)
    solution = record.get("solution")
    if solution is not None and not isinstance(solution, str):
        raise DataFormatError(f"{where}: field 'solution' must be a string, got {type(solution).__name__}")
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise DataFormatError(f"{where}: field 'answer' must be a string or number, got {type(answer).__name__}")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        if solution is None:
            raise DataFormatError(f"{where}: record has neither 'answer' nor 'solution'; got fields {sorted(record)}")
        answer = last_boxed(solution)
        if answer is None:
            raise DataFormatError(
                f"{where}: no 'answer' field and no balanced \\boxed{{...}} in 'solution': {solution[-80:]!r}"
            )
    answer = str(answer).strip()
    example = {k: v for k, v in record.items() if k not in ("prompt",)}
    example.update(prompt=problem, problem=problem, answer=answer, final_answer=answer)
    if solution is not None:
        example["solution"] = solution
    return example


def load_math(path: str | os.PathLike) -> list[Example]:
    """All examples of a MATH-style ``.jsonl``/``.jsonl.gz``/``.parquet`` file."""
    return [math_example(record, where=where) for where, record in read_records(path)]
