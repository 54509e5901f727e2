"""grpo_jax.metrics: the exact JSON lines, resuming, reading back, TensorBoard events, the progress bar, plots."""

import glob
import json
import math
import os
import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from grpo_jax.metrics import TENSORBOARD_FLUSH_SECS, MetricsWriter, plot_metrics, read_metrics, summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _writer(path, **kwargs):
    """A writer without TensorBoard or progress bar (fast); tests of those ask for them."""
    return MetricsWriter(path, **{"tensorboard": False, "progress": False, **kwargs})


def _lines(run_dir):
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return f.read().splitlines()


def _write_steps(run_dir, steps, **kwargs):
    with _writer(run_dir, **kwargs) as w:
        for step in steps:
            w.write(step, {"reward/mean": step / 10})


def _mode(path):
    return os.stat(path).st_mode & 0o777


def _default_file_mode():
    """The permissions open() gives a new file under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _tensorboard_events(run_dir, *, complete=True):
    """All events of all event files under run_dir/tensorboard, parsed from the TFRecord framing.

    Each record: uint64 length, uint32 masked CRC of the length, `length` bytes of Event proto, uint32 CRC.
    complete=False ignores a last record that a file does not hold entirely yet (read while being written).
    """
    files = sorted(glob.glob(str(run_dir / "tensorboard" / "events.out.tfevents.*")))
    assert files, f"no event file under {run_dir / 'tensorboard'}"
    events = []
    for name in files:
        with open(name, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            if pos + 12 + length + 4 > len(data):
                break
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            events.append(event)
            pos += 12 + length + 4
        assert pos == len(data) or not complete, f"{name}: {len(data) - pos} bytes after the last whole record"
    return events


def _scalars(events):
    return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value}


# ----------------------------------------------------------------------------------------------------------------
# The JSON lines


def test_write_appends_exact_json_lines_flushed_before_close(tmp_path):
    w = _writer(tmp_path)
    w.write(1, {"reward/mean": 0.5, "time/step_s": 2, "completion/length_max": 37})
    w.write(1, {"eval/accuracy": 0.25})
    w.write(2, {"reward/mean": -1.5})
    # Read while the writer is still open: every line is already on disk.
    assert _lines(tmp_path) == [
        '{"step": 1, "reward/mean": 0.5, "time/step_s": 2, "completion/length_max": 37}',
        '{"step": 1, "eval/accuracy": 0.25}',
        '{"step": 2, "reward/mean": -1.5}',
    ]
    assert read_metrics(tmp_path) == [
        {"step": 1, "reward/mean": 0.5, "time/step_s": 2, "completion/length_max": 37, "eval/accuracy": 0.25},
        {"step": 2, "reward/mean": -1.5},
    ]
    w.close()
    w.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        w.write(3, {"reward/mean": 0.0})


def test_non_finite_values_are_written_as_null_and_read_back_as_nan(tmp_path):
    with _writer(tmp_path) as w:
        w.write(0, {"loss": float("nan"), "kl": float("inf"), "a": -np.inf, "b": jnp.float32(jnp.nan)})
    (line,) = _lines(tmp_path)
    assert line == '{"step": 0, "loss": null, "kl": null, "a": null, "b": null}'

    def reject(constant):
        raise AssertionError(f"invalid JSON constant {constant}")

    json.loads(line, parse_constant=reject)  # strict JSON: no NaN/Infinity tokens
    (record,) = read_metrics(tmp_path / "metrics.jsonl")
    assert record["step"] == 0 and all(math.isnan(record[k]) for k in ("loss", "kl", "a", "b"))


def test_numpy_and_jax_scalars_become_plain_python_numbers(tmp_path):
    metrics = {
        "np_f32": np.float32(0.1), "np_f64": np.float64(0.3), "np_i64": np.int64(7), "np_u8": np.uint8(255),
        "np_bool": np.bool_(True), "np_0d": np.array(2.5), "py_bool": False,
        "jax_f32": jnp.float32(0.1), "jax_bf16": jnp.bfloat16(0.1), "jax_i32": jnp.int32(-3),
        "jax_mean": jnp.mean(jnp.array([1.0, 2.0])), "jax_bool": jnp.array(True),
    }
    with _writer(tmp_path) as w:
        w.write(np.int64(4), metrics)
        w.write(jnp.int32(5), {"x": 1})
    first, second = _lines(tmp_path)
    assert first == (
        '{"step": 4, "np_f32": 0.1, "np_f64": 0.3, "np_i64": 7, "np_u8": 255, "np_bool": 1, "np_0d": 2.5, '
        '"py_bool": 0, "jax_f32": 0.1, "jax_bf16": 0.1, "jax_i32": -3, "jax_mean": 1.5, "jax_bool": 1}'
    )
    assert second == '{"step": 5, "x": 1}'
    record = json.loads(first)
    assert {k: type(v) for k, v in record.items()} == {
        k: int if k in ("step", "np_i64", "np_u8", "np_bool", "py_bool", "jax_i32", "jax_bool") else float
        for k in record
    }
    # The short decimal form still reads back as the same float32 / bfloat16 value.
    assert np.float32(record["jax_f32"]) == np.float32(0.1)
    assert jnp.bfloat16(record["jax_bf16"]) == jnp.bfloat16(0.1)


@pytest.mark.parametrize(
    "step, metrics, error, match",
    [
        (-1, {"a": 1.0}, ValueError, "`step` must be a non-negative integer, got -1"),
        (1.0, {"a": 1.0}, TypeError, "`step` must be a non-negative integer, got float 1.0"),
        (True, {"a": 1.0}, TypeError, "`step` must be a non-negative integer"),
        (1, {"a": "high"}, TypeError, "metric 'a' must be a real number, got str 'high'"),
        (1, {"a": 1 + 2j}, TypeError, "metric 'a' must be a real number"),
        (1, {"a": jnp.ones(3)}, ValueError, r"metric 'a' must be a scalar, got an array of shape \(3,\)"),
        (1, {"step": 2}, ValueError, "metric names must be non-empty strings other than 'step', got 'step'"),
        (1, {"": 2}, ValueError, "metric names must be non-empty strings"),
        (1, [("a", 1.0)], TypeError, "`metrics` must be a mapping of name to number, got list"),
    ],
)
def test_write_rejects_bad_arguments_naming_them(tmp_path, step, metrics, error, match):
    with _writer(tmp_path) as w:
        with pytest.raises(error, match=match):
            w.write(step, metrics)
    assert _lines(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"total_steps": 0}, ValueError, "`total_steps` must be a positive integer or None, got 0"),
        ({"resume_step": -2}, ValueError, "`resume_step` must be a non-negative integer, got -2"),
        ({"resume_step": "3"}, TypeError, "`resume_step` must be a non-negative integer, got str '3'"),
    ],
)
def test_constructor_rejects_bad_arguments_naming_them(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        _writer(tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_disabled_writer_creates_nothing_but_still_checks_arguments(tmp_path):
    run_dir = tmp_path / "run"
    with MetricsWriter(run_dir, enabled=False, total_steps=10) as w:  # TensorBoard and progress bar on, too
        w.write(1, {"reward/mean": 0.5})
        with pytest.raises(TypeError, match="metric 'a' must be a real number"):
            w.write(2, {"a": "x"})
    assert not run_dir.exists()
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------------
# Resuming and reading back


def test_resume_step_drops_lines_logged_after_the_checkpoint(tmp_path):
    _write_steps(tmp_path, [1, 2, 3, 4, 5])
    with _writer(tmp_path, resume_step=3) as w:
        assert [json.loads(line)["step"] for line in _lines(tmp_path)] == [1, 2, 3]
        w.write(4, {"reward/mean": 4.5})
        w.write(5, {"reward/mean": 5.5})
    assert _lines(tmp_path) == [
        '{"step": 1, "reward/mean": 0.1}',
        '{"step": 2, "reward/mean": 0.2}',
        '{"step": 3, "reward/mean": 0.3}',
        '{"step": 4, "reward/mean": 4.5}',
        '{"step": 5, "reward/mean": 5.5}',
    ]
    assert [r["reward/mean"] for r in read_metrics(tmp_path)] == [0.1, 0.2, 0.3, 4.5, 5.5]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]  # the atomic rewrite left no temporary file
    assert _mode(tmp_path / "metrics.jsonl") == _default_file_mode()


def test_resume_keeps_every_line_of_the_checkpoint_step_and_tolerates_a_missing_file(tmp_path):
    with _writer(tmp_path) as w:
        w.write(2, {"reward/mean": 0.2})
        w.write(2, {"eval/accuracy": 0.5})
        w.write(3, {"reward/mean": 0.3})
    _writer(tmp_path, resume_step=2).close()
    assert _lines(tmp_path) == ['{"step": 2, "reward/mean": 0.2}', '{"step": 2, "eval/accuracy": 0.5}']
    _write_steps(tmp_path / "fresh", [1], resume_step=7)
    assert _lines(tmp_path / "fresh") == ['{"step": 1, "reward/mean": 0.1}']


def test_without_resume_step_new_lines_are_appended(tmp_path):
    _write_steps(tmp_path, [1, 2])
    _write_steps(tmp_path, [3])
    assert [json.loads(line)["step"] for line in _lines(tmp_path)] == [1, 2, 3]


def test_truncated_last_line_is_ignored_with_a_warning_and_repaired_on_reopening(tmp_path):
    _write_steps(tmp_path, [1, 2])
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "reward/me')  # the crash cut this line
    with pytest.warns(UserWarning, match=r"metrics.jsonl:3: ignoring a truncated last line"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    with pytest.warns(UserWarning, match="truncated last line"):
        _write_steps(tmp_path, [3])
    assert [json.loads(line)["step"] for line in _lines(tmp_path)] == [1, 2, 3]


def test_complete_last_line_without_newline_is_kept_and_appended_after(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.1}')
    _write_steps(tmp_path, [2])
    assert _lines(tmp_path) == ['{"step": 1, "reward/mean": 0.1}', '{"step": 2, "reward/mean": 0.2}']


@pytest.mark.parametrize(
    "bad_line, match",
    [
        ('{"step": 2, "reward/me', "metrics.jsonl:2: not valid JSON"),
        ('{"reward/mean": 0.2}', "metrics.jsonl:2: expected a JSON object with a non-negative integer 'step'"),
        ('{"step": "2"}', "metrics.jsonl:2: expected a JSON object"),
        ("[2]", "metrics.jsonl:2: expected a JSON object"),
    ],
)
def test_malformed_line_before_the_end_raises_naming_file_and_line(tmp_path, bad_line, match):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n' + bad_line + '\n{"step": 3, "a": 3}\n')
    with pytest.raises(ValueError, match=match):
        read_metrics(path)
    with pytest.raises(ValueError, match=match):  # and a writer does not append to a corrupt file
        _writer(tmp_path)


def test_malformed_last_line_ending_in_newline_is_not_a_truncation(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2: not valid JSON"):
        read_metrics(path)


def test_read_metrics_sorts_steps_merges_lines_and_names_a_missing_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 2, "a": 2}\n\n{"step": 1, "a": 1}\n{"step": 2, "b": 5}\n{"step": 2, "a": 3}\n'
    )
    assert read_metrics(tmp_path) == [{"step": 1, "a": 1}, {"step": 2, "a": 3, "b": 5}]
    with pytest.raises(FileNotFoundError, match="read_metrics: no metrics file at .*nowhere"):
        read_metrics(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------------------------
# TensorBoard and the progress bar


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    with MetricsWriter(tmp_path, progress=False) as w:
        w.write(1, {"reward/mean": 0.5, "time/step_s": 2, "loss": float("nan")})
        w.write(1, {"eval/accuracy": 0.25})
        w.write(2, {"reward/mean": jnp.float32(0.75)})
    assert _scalars(_tensorboard_events(tmp_path)) == {
        ("reward/mean", 1): 0.5, ("time/step_s", 1): 2.0, ("eval/accuracy", 1): 0.25, ("reward/mean", 2): 0.75,
    }  # the NaN loss is in the JSON line only


def test_tensorboard_events_reach_the_disk_within_the_flush_interval_while_open(tmp_path):
    with MetricsWriter(tmp_path, progress=False) as w:
        w.write(1, {"reward/mean": 0.5})
        w.write(2, {"reward/mean": 0.75})
        deadline = time.monotonic() + TENSORBOARD_FLUSH_SECS + 3
        while len(_scalars(_tensorboard_events(tmp_path, complete=False))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _scalars(_tensorboard_events(tmp_path, complete=False)) == {("reward/mean", 1): 0.5,
                                                                           ("reward/mean", 2): 0.75}


def test_resumed_run_tells_tensorboard_to_purge_steps_after_the_checkpoint(tmp_path):
    with MetricsWriter(tmp_path, progress=False) as w:
        for step in range(1, 6):
            w.write(step, {"reward/mean": step / 10})
    with MetricsWriter(tmp_path, progress=False, resume_step=3) as w:
        w.write(4, {"reward/mean": 4.5})
    events = _tensorboard_events(tmp_path)
    starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [4]  # TensorBoard hides the older events from step 4 on
    new_file_scalars = [(v.tag, e.step, v.simple_value) for e in events[-1:] for v in e.summary.value]
    assert new_file_scalars == [("reward/mean", 4, 4.5)]


def test_progress_bar_shows_step_of_total_and_chosen_keys_on_stderr(tmp_path, capsys):
    with MetricsWriter(tmp_path, tensorboard=False, total_steps=10, resume_step=2) as w:
        w.write(3, {"reward/mean": 0.123456, "time/step_s": 1.5, "kl": 0.01})
        w.write(3, {"eval/accuracy": 0.75})
    captured = capsys.readouterr()
    assert captured.out == ""
    final = captured.err.split("\r")[-1]
    assert "3/10" in final
    assert "reward/mean=0.1235" in final and "time/step_s=1.5" in final and "eval/accuracy=0.75" in final
    assert "kl" not in final


# ----------------------------------------------------------------------------------------------------------------
# Plots and summary


def _png_size(path, min_bytes=10_000):
    """(width, height) in pixels of a PNG file, after checking its signature and that it is not trivially small."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_metrics_writes_a_png_of_every_curve(tmp_path):
    with _writer(tmp_path) as w:
        for step in range(1, 21):
            w.write(step, {
                "reward/mean": step / 20, "reward/math/mean": step / 25, "reward/format/mean": 1.0,
                "accuracy": step / 30, "kl": 0.001 * step, "loss": float("nan") if step == 7 else -0.1,
                "completion/length_mean": 100 + step, "completion/length_max": 200 + step,
            })
            if step % 5 == 0:
                w.write(step, {"eval/accuracy": step / 40})
    path = plot_metrics(tmp_path)
    assert path == str(tmp_path / "curves.png")
    assert _png_size(path) == (1200, 1050)  # 5 panels (reward, accuracy, KL, length, loss): 2 columns x 3 rows
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "metrics.jsonl"]
    assert _mode(path) == _default_file_mode()


def test_plot_metrics_without_eval_keys_and_to_a_chosen_path(tmp_path):
    _write_steps(tmp_path, range(1, 6))
    png = tmp_path / "plots" / "run.png"
    png.parent.mkdir()
    assert plot_metrics(tmp_path / "metrics.jsonl", png) == str(png)
    assert _png_size(png) == (600, 350)  # the reward panel alone


def test_plot_metrics_with_no_known_key_says_no_data(tmp_path):
    with _writer(tmp_path) as w:
        w.write(1, {"something/else": 1.0})
    assert _png_size(plot_metrics(tmp_path), min_bytes=2_000) == (600, 350)


def test_summarize_gives_first_and_last_values_of_the_main_curves():
    records = [
        {"step": 1, "reward/mean": 0.125, "kl": 0.0, "other": 3},
        {"step": 5, "reward/mean": 0.5, "eval/accuracy": 0.25, "kl": float("nan")},
        {"step": 9, "reward/mean": 0.875, "eval/accuracy": 0.75},
    ]
    assert summarize(records).splitlines() == [
        "reward/mean             0.125 (step 1) -> 0.875 (step 9)",
        "eval/accuracy           0.25 (step 5) -> 0.75 (step 9)",
        "kl                      0 (step 1) -> nan (step 5)",
    ]
    assert summarize([]) == "no metrics"
