"""Errors the user fixes: a setting, a command-line flag or an input file is wrong.

The ``grpo-jax`` command line prints a ``ConfigError`` as one line and exits with status 2; any other
exception is a bug (or a failure of the machine) and keeps its traceback. Raise ``ConfigError`` (or a
subclass) only for what the user controls: a config field, a flag, a data file, a model or run directory.
Argument checks of the library's functions stay ``ValueError``/``TypeError``: a caller of the Python API
gets the traceback that points at the wrong call.

This module imports nothing, so that every part of the package can use it.
"""


class ConfigError(ValueError):
    """A config or input error: the user fixes it by changing a setting, a flag or an input file.

    A subclass of ValueError, so ``except ValueError`` (and ``pytest.raises(ValueError)``) still catch it.
    """


class InputNotFoundError(ConfigError, FileNotFoundError):
    """A file or directory the user named (a data file, a model or run directory, a checkpoint step) does not
    exist or lacks a file it needs. Also a FileNotFoundError, so code that catches that keeps working."""


class OutputExistsError(ConfigError, FileExistsError):
    """The output the user named already holds results that would be overwritten (e.g. a run directory with
    checkpoints, without --resume). Also a FileExistsError."""


class RunDirectoryLockedError(ConfigError):
    """Another live run holds the run directory the user named (see grpo_jax.run_lock): choose another
    --output-dir, or wait for that run to end."""


class CheckpointDamagedError(ConfigError):
    """A checkpoint the user asked for (by default the newest) has missing or corrupt files. The message names
    the step, the first bad file and the intact earlier steps (``run.resume_fallback=true`` resumes from the
    newest of those)."""


class RunFailure(RuntimeError):
    """The run stopped on purpose for a reason the user must see (not a bug in grpo_jax): e.g. its loss turned
    NaN. The command line prints it as one paragraph, without a traceback, and exits with status 3."""


class NonFiniteError(RunFailure):
    """A training step produced a NaN or Inf loss, gradient norm or parameter update (run.on_nonfinite=stop).
    Nothing of that step was saved: the newest checkpoint is the last finite state."""
