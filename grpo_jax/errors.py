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
