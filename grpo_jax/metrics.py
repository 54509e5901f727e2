"""Training metrics: one JSON line per write, TensorBoard scalars, a progress bar, and plots of the curves.

A run's output directory gets:

  ``metrics.jsonl``  one JSON object per :meth:`MetricsWriter.write` call, e.g.
                     ``{"step": 12, "reward/mean": 0.41, "time/step_s": 3.2}``, flushed on every call, so a
                     crashed run loses nothing it had written. Non-finite values (NaN, inf) are written as
                     ``null``: every line is strict JSON.
  ``tensorboard/``   the same scalars as TensorBoard event files (``tensorboard --logdir OUTPUT_DIR/tensorboard``),
                     on disk within TENSORBOARD_FLUSH_SECS seconds of a write.
  ``curves.png``     written by :func:`plot_metrics`: reward, accuracy, KL, completion length and loss by step.

Metric keys are ``/``-namespaced, e.g. ``reward/mean``, ``reward/<reward name>/mean``, ``time/step_s``
(seconds), ``eval/accuracy`` (fraction in [0, 1]), ``kl`` (nats per token), ``completion/length_mean`` (tokens).
Train and eval metrics of one step may be written by separate calls; :func:`read_metrics` merges them into one
dict per step.

Multi-host runs: construct the writer with ``enabled=jax.process_index() == 0`` so that only one process writes.
The output directory may be a URL (``gs://bucket/run``): the files are then staged locally and copied there
(``grpo_jax.storage.StagedDir``) every SYNC_INTERVAL_S seconds, on :meth:`MetricsWriter.flush` and on close.
Resuming from a checkpoint at step k: pass ``resume_step=k`` so that lines logged after that checkpoint by the
killed run are dropped and the file keeps one history.

tensorboardX and matplotlib are imported only when used.
"""

from __future__ import annotations

import io
import json
import math
import operator
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

import numpy as np

from grpo_jax import storage

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
PLOT_FILENAME = "curves.png"
# tensorboardX writes events from a background thread; this bounds how long they wait before reaching the disk.
TENSORBOARD_FLUSH_SECS = 2

# Shown in the progress bar's postfix when a write contains them (the last value of each is kept).
PROGRESS_KEYS = ("reward/mean", "eval/accuracy", "time/step_s")

# (panel title, keys drawn in it). A callable selects keys from all the keys present in the records.
Selector = Callable[[Sequence[str]], list[str]]


def _reward_keys(keys: Sequence[str]) -> list[str]:
    """``reward/mean`` and every ``reward/<name>/mean`` present (one curve per reward function)."""
    per_reward = sorted(k for k in keys if k.count("/") == 2 and k.startswith("reward/") and k.endswith("/mean"))
    return [k for k in ["reward/mean"] if k in keys] + per_reward


def _present(*wanted: str) -> Selector:
    return lambda keys: [k for k in wanted if k in keys]


PANELS: tuple[tuple[str, Selector], ...] = (
    ("reward", _reward_keys),
    ("accuracy", _present("eval/accuracy", "accuracy")),
    ("KL to reference", _present("kl")),
    ("completion length (tokens)", _present("completion/length_mean", "completion/length_max")),
    ("loss", _present("loss")),
)

# Curves reported by summarize(), in this order, when present.
SUMMARY_KEYS = (
    "reward/mean", "eval/accuracy", "accuracy", "kl", "loss", "completion/length_mean", "time/step_s",
)


# --------------------------------------------------------------------------------------------------------------
# Values and lines


def _check_step(fn: str, name: str, step: Any) -> int:
    """A non-negative Python/NumPy/JAX integer (not a bool), returned as a Python int."""
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"{fn}: `{name}` must be a non-negative integer, got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise TypeError(
            f"{fn}: `{name}` must be a non-negative integer, got {type(step).__name__} {step!r}"
        ) from None
    if value < 0:
        raise ValueError(f"{fn}: `{name}` must be a non-negative integer, got {value}")
    return value


def _plain_number(key: str, value: Any) -> int | float | None:
    """One metric value as a plain Python int or float, or None when it is not finite (NaN, +-inf).

    Accepts Python numbers, NumPy scalars and 0-d arrays, and JAX scalars (copied to host). Booleans become 0/1.
    Floats of any width are written in the shortest decimal form that reads back as the same value of their
    dtype: float32 0.1 is written as 0.1, not 0.10000000149011612.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):  # np.float64 too: it subclasses float
        return float(value) if math.isfinite(value) else None
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(
            f"MetricsWriter.write: metric {key!r} must be a scalar, got an array of shape {arr.shape}"
        )
    if arr.dtype.kind in "biu":
        return int(arr)
    try:
        number = float(arr) if arr.dtype.kind in "fV" else None  # "V": ml_dtypes floats such as bfloat16
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise TypeError(
            f"MetricsWriter.write: metric {key!r} must be a real number, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(number):
        return None
    for digits in range(1, 18):  # the fewest significant digits that read back as the same value of its dtype
        short = float(f"{number:.{digits}g}")
        if np.asarray(short, dtype=arr.dtype) == arr:
            return short
    return number


def _record(step: int, metrics: Mapping[str, Any]) -> dict[str, int | float | None]:
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"MetricsWriter.write: `metrics` must be a mapping of name to number, got {type(metrics).__name__}"
        )
    record: dict[str, int | float | None] = {"step": step}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key or key == "step":
            raise ValueError(
                f"MetricsWriter.write: metric names must be non-empty strings other than 'step', got {key!r}"
            )
        record[key] = _plain_number(key, value)
    return record


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, allow_nan=False) + "\n"


def _parse_lines(path: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Yield (record, line) for each non-blank line of a metrics.jsonl file, in file order.

    A last line that does not parse and has no trailing newline was cut by a crash mid-write: it is skipped with
    a warning. Any other line that is not a JSON object with a non-negative integer "step" raises ValueError
    naming the file and line number.
    """
    lines = storage.read_text(path).splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                warnings.warn(f"{path}:{number}: ignoring a truncated last line (a crash mid-write?): {line!r}",
                              stacklevel=2)
                return
            raise ValueError(f"{path}:{number}: not valid JSON ({e}): {line.rstrip()!r}") from None
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(
                f"{path}:{number}: expected a JSON object with a non-negative integer 'step', "
                f"got {line.rstrip()!r}"
            )
        yield record, line


def _metrics_path(path: str | os.PathLike[str]) -> str:
    """``path`` itself when it is a file, ``path/metrics.jsonl`` when it is a directory."""
    path = os.fspath(path)
    return storage.join(path, METRICS_FILENAME) if storage.isdir(path) else path


# --------------------------------------------------------------------------------------------------------------
# Writing


class MetricsWriter:
    """Writes a run's metrics to ``OUTPUT_DIR/metrics.jsonl``, TensorBoard and a tqdm progress bar.

    Args:
      output_dir: the run's directory (created if missing), a local path or a URL such as ``gs://bucket/run``.
      enabled: False on processes that must not write (non-zero processes of a multi-host run): then nothing is
        written and no file or directory is created; ``write`` only checks its arguments.
      tensorboard: also write the scalars to ``OUTPUT_DIR/tensorboard/`` (tensorboardX event files). They are
        written by a background thread and reach the disk within :data:`TENSORBOARD_FLUSH_SECS` seconds, and
        on :meth:`close`; metrics.jsonl is the record that is on disk when ``write`` returns.
      progress: show a progress bar on stderr with the step and the :data:`PROGRESS_KEYS` present.
      total_steps: the run's last step, for the progress bar (None: no total shown).
      resume_step: the step of the checkpoint this run resumes from. Lines of ``metrics.jsonl`` with a larger
        step (written by the previous run after that checkpoint) are removed before anything is appended, so
        the file holds one history; TensorBoard is told to hide that run's events from step ``resume_step + 1``
        on (tensorboardX ``purge_step``; the events stay in the old file but TensorBoard does not show them).
        None: existing lines are all kept and new ones appended after them.

    An existing ``metrics.jsonl`` whose last line was cut by a crash is repaired on opening (that line dropped,
    with a warning), so appended lines never run into it.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
        total_steps: int | None = None,
        resume_step: int | None = None,
    ) -> None:
        if total_steps is not None and _check_step("MetricsWriter", "total_steps", total_steps) == 0:
            raise ValueError("MetricsWriter: `total_steps` must be a positive integer or None, got 0")
        if resume_step is not None:
            resume_step = _check_step("MetricsWriter", "resume_step", resume_step)
        self.output_dir = os.fspath(output_dir)
        self.path = storage.join(self.output_dir, METRICS_FILENAME)
        self.enabled = enabled
        self._closed = False
        self._file: IO[str] | None = None
        self._stage: storage.StagedDir | None = None
        self._tensorboard: Any = None
        self._bar: Any = None
        self._postfix: dict[str, str] = {}
        if not enabled:
            return
        self._stage = storage.StagedDir(self.output_dir)  # the directory itself when it is local
        self._stage.pull(METRICS_FILENAME)
        self._local_path = os.path.join(self._stage.local, METRICS_FILENAME)
        self._repair(resume_step)
        self._file = open(self._local_path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(
                logdir=os.path.join(self._stage.local, TENSORBOARD_DIRNAME),
                purge_step=None if resume_step is None else resume_step + 1,
                flush_secs=TENSORBOARD_FLUSH_SECS,
            )
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=resume_step or 0, unit="step", file=sys.stderr, dynamic_ncols=True
            )

    def _repair(self, resume_step: int | None) -> None:
        """Drop lines after ``resume_step`` and a truncated last line; rewrite the file only if that changes."""
        if not os.path.exists(self._local_path):
            return
        original = storage.read_text(self._local_path)
        kept = [line for record, line in _parse_lines(self._local_path)
                if resume_step is None or record["step"] <= resume_step]
        text = "".join(line if line.endswith("\n") else line + "\n" for line in kept)
        if text != original:
            storage.write_text(self._local_path, text)

    def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
        """Append ``{"step": step, **metrics}`` as one JSON line (flushed), log the scalars, update the bar.

        Args:
          step: the training step (non-negative int; NumPy/JAX integers accepted).
          metrics: name -> real scalar (Python, NumPy or JAX; 0-d arrays). NaN and inf are written as null to
            the JSON file, shown as "nan" in the progress bar, and left out of TensorBoard (where a diverged
            curve simply stops). Several calls may share a step (say train metrics, then eval metrics); each
            adds its own line and :func:`read_metrics` merges them.
        """
        if self._closed:
            raise RuntimeError(f"MetricsWriter.write: the writer for {self.output_dir!r} is closed")
        step = _check_step("MetricsWriter.write", "step", step)
        record = _record(step, metrics)
        if not self.enabled:
            return
        self._file.write(_line(record))
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    self._tensorboard.add_scalar(key, value, global_step=step)
        if self._bar is not None:
            self._update_bar(record)
        self._stage.sync(force=False)

    def flush(self) -> None:
        """Make everything written so far durable at the output directory (for a URL: copy it there now).
        The trainer calls this before each checkpoint, so a resumed run's history has no gap."""
        if not self.enabled or self._closed:
            return
        if self._tensorboard is not None:
            self._tensorboard.flush()
        self._stage.sync()

    def _update_bar(self, record: Mapping[str, Any]) -> None:
        for key in PROGRESS_KEYS:
            if key in record:
                value = record[key]
                self._postfix[key] = "nan" if value is None else f"{value:.4g}"
        if record["step"] > self._bar.n:
            self._bar.update(record["step"] - self._bar.n)
        self._bar.set_postfix(self._postfix, refresh=True)

    def close(self) -> None:
        """Flush and close the files and the progress bar. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._bar is not None:
            self._bar.close()
        if self._stage is not None:
            self._stage.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------
# Reading, plotting, summarizing


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, int | float]]:
    """Read a metrics.jsonl file into one dict per step, in step order.

    Args:
      path: the metrics.jsonl file, or the output directory holding it.

    Returns:
      ``[{"step": s, **metrics}, ...]`` sorted by step; lines sharing a step are merged (a key written twice
      keeps the later line's value). ``null`` (a non-finite value was written) reads back as ``float("nan")``.

    Raises:
      FileNotFoundError: no such file. ValueError: a malformed line other than a truncated last one (which is
      skipped with a warning); the message names the file and the line number.
    """
    file = _metrics_path(path)
    if not storage.exists(file) or storage.isdir(file):
        raise FileNotFoundError(
            f"read_metrics: no metrics file at {file!r} (expected {METRICS_FILENAME} or the directory holding it)"
        )
    by_step: dict[int, dict[str, Any]] = {}
    for record, _ in _parse_lines(file):
        merged = by_step.setdefault(record["step"], {})
        merged.update({k: math.nan if v is None else v for k, v in record.items()})
    return [by_step[step] for step in sorted(by_step)]


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key`` over the records that have it (eval keys appear on eval steps only)."""
    steps = [r["step"] for r in records if key in r]
    return steps, [math.nan if r[key] is None else float(r[key]) for r in records if key in r]


def plot_metrics(
    output_dir_or_metrics_path: str | os.PathLike[str], png_path: str | os.PathLike[str] | None = None
) -> str:
    """Plot the run's curves against step into one PNG and return its path.

    Panels (each drawn only when one of its keys is present): reward (``reward/mean`` and each
    ``reward/<name>/mean``), accuracy (``eval/accuracy`` on eval steps, train ``accuracy``), KL (``kl``),
    completion length (``completion/length_mean``, ``completion/length_max``) and ``loss``. With none of them
    present the image says "no data". Steps lacking a key are skipped for that curve; NaN values leave gaps.

    Args:
      output_dir_or_metrics_path: the output directory or its metrics.jsonl.
      png_path: where to write; default ``curves.png`` beside the metrics file. Written atomically.

    Uses matplotlib's Agg canvas directly (no pyplot, no display, no global state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics_file = _metrics_path(output_dir_or_metrics_path)
    records = read_metrics(metrics_file)
    png = storage.join(os.path.dirname(metrics_file), PLOT_FILENAME) if png_path is None else os.fspath(png_path)
    keys = sorted({k for r in records for k in r})
    panels = [(title, selected) for title, select in PANELS if (selected := select(keys))]

    ncols = 2 if len(panels) > 1 else 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(6 * ncols, 3.5 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, panel_keys) in zip(axes, panels, strict=False):  # an odd count leaves the last axes empty
        for key in panel_keys:
            steps, values = _series(records, key)
            ax.plot(steps, values, label=key, marker="o" if len(steps) <= 30 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if not panels:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center", fontsize=14, transform=axes[0].transAxes)
    where = os.path.dirname(metrics_file if storage.is_url(metrics_file) else os.path.abspath(metrics_file))
    fig.suptitle(where, fontsize="small")
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    storage.write_bytes(png, image.getvalue())
    return png


def summarize(records: Sequence[Mapping[str, Any]]) -> str:
    """A few lines for the end of a run: first and last value of each main curve present.

    Args:
      records: as returned by :func:`read_metrics` (one dict per step, with "step").

    Returns:
      e.g. ``"reward/mean    0.125 (step 1) -> 0.875 (step 100)"``, one line per key of :data:`SUMMARY_KEYS`
      present; "no metrics" when there are none.
    """
    lines = []
    width = max(map(len, SUMMARY_KEYS))
    for key in SUMMARY_KEYS:
        steps, values = _series(records, key)
        if steps:
            lines.append(
                f"{key:<{width}}  {values[0]:.4g} (step {steps[0]}) -> {values[-1]:.4g} (step {steps[-1]})"
            )
    return "\n".join(lines) if lines else "no metrics"
