"""Data files a new user gets wrong: an empty file, bytes that are not UTF-8, and (with data.overlong=error) a
prompt longer than data.max_prompt_length anywhere in the file are one error line naming the file and the line,
before anything is written to the output directory."""

import json

import pytest
from cli_runs import TINY, error_line, snapshot

from grpo_jax.cli import main
from grpo_jax.data import DataFormatError, load_gsm8k_jsonl, read_jsonl
from grpo_jax.data.jsonl import read_records


def _records(n: int) -> list[str]:
    return [json.dumps({"question": f"{i} + 1", "answer": f"#### {i + 1}"}) for i in range(n)]


def _train(tmp_path, path, *overrides) -> tuple[int, dict, dict]:
    """Run `grpo-jax train` on the gsm8k_jsonl file ``path`` into an output dir that already holds a file;
    returns the exit status and the output dir's snapshot before and after."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    status = main(["train", f"--output-dir={run}", "data.task=gsm8k_jsonl", f"data.path={path}", *TINY,
                   "data.eval_examples=4", *overrides])
    return status, before, snapshot(run)


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_an_empty_file_names_the_file(tmp_path, capsys, content):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DataFormatError, match="no records: the file is empty or holds only blank lines"):
        list(read_jsonl(path))
    status, before, after = _train(tmp_path, path)
    assert status == 2 and after == before
    assert error_line(capsys) == (f"grpo-jax: error: {path}: no records: the file is empty or holds only blank "
                                  "lines; expected one JSON object per line")


def test_an_empty_parquet_file_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"problem": pa.array([], pa.string()), "solution": pa.array([], pa.string())}), path)
    with pytest.raises(DataFormatError, match=f"{path}: no records: the Parquet file has no rows"):
        list(read_records(path))


@pytest.mark.parametrize("gz", [False, True])
def test_bytes_that_are_not_utf8_name_the_line_and_byte_offset(tmp_path, capsys, gz):
    lines = _records(3)
    bad = b'{"question": "caf\xe9 + 1", "answer": "#### 1"}'  # Latin-1's e-acute: a file saved as Latin-1
    data = b"\xef\xbb\xbf" + "\n".join(lines[:2]).encode() + b"\n" + bad + b"\n" + lines[2].encode() + b"\n"
    path = tmp_path / ("train.jsonl.gz" if gz else "train.jsonl")
    if gz:
        import gzip

        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(DataFormatError) as e:
        load_gsm8k_jsonl(path)
    assert str(e.value) == (f"{path}, line 3: not UTF-8 text (byte e9 at byte offset {offset} of the file); save "
                            "the file as UTF-8")
    status, before, after = _train(tmp_path, path)
    assert status == 2 and after == before
    assert f"{path}, line 3: not UTF-8 text (byte e9 at byte offset {offset}" in error_line(capsys)


def test_a_byte_order_mark_is_still_fine(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(_records(2)).encode())
    assert [e["final_answer"] for e in load_gsm8k_jsonl(path)] == ["1", "2"]


def test_overlong_error_checks_every_prompt_before_training(tmp_path, capsys):
    """Only line 40 of 40 is too long. One step of 4 prompts would not sample it (the old, lazy check passed);
    the check now reads every prompt first."""
    lines = _records(39) + [json.dumps({"question": "what is " + "1 + " * 60 + "1", "answer": "#### 61"})]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n")  # a blank line: line 41
    status, before, after = _train(tmp_path, path, "data.overlong=error")
    assert status == 2 and after == before
    line = error_line(capsys)
    assert line.startswith(f"grpo-jax: error: {path}, line 41: the prompt is ")
    assert "tokens, longer than data.max_prompt_length=16 (data.overlong=error): 'what is 1 + 1" in line
    # the default, overlong=drop, trains on the rest
    assert _train(tmp_path, path)[0] == 0
