"""Test set-up: JAX on 8 simulated CPU devices, so every sharded code path runs on this machine.

The flag must be in the environment before JAX initialises its backend, hence at import of conftest.

XLA's compiles are most of the suite's time, and many tests compile the same small programs (the tiny
trainer's sampler, update and log-prob programs) behind fresh ``jax.jit`` wrappers, which JAX's in-memory
cache does not share. A persistent compilation cache, fresh for each session (so nothing carries over
between runs), shares them across tests, xdist workers and the subprocesses tests launch. It is keyed by
the program, its shardings and compile options, so it changes no result; compile counts
(grpo_jax.compilation) are the same with or without it, as a load from the cache counts as a compile.
Only compiles over 0.2 s are stored: below that, writing and looking up entries costs more than it saves
(measured: with every compile stored and the cache's file lock on, the suite was slower). Without eviction JAX
writes entries without a lock; an entry read while another process is writing it fails to load and JAX
compiles instead. Measured on test_models_parity, test_trainer_step and test_logprobs in one process: 192 s
without the cache, 158 s with it. Set GRPO_JAX_TEST_NO_XLA_CACHE=1 to run without it.
"""

import atexit
import os
import shutil
import tempfile

_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICES_FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if not os.environ.get("GRPO_JAX_TEST_NO_XLA_CACHE") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="grpo-jax-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)  # xdist workers inherit it and end first
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI replays the same examples every run (no flaky reds); locally each run explores new ones.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from grpo_jax.sharding import make_mesh  # noqa: E402


@pytest.fixture(scope="session")
def mesh8():
    """A 1-D mesh over all 8 simulated devices, axis "data", Auto axis type."""
    assert jax.device_count() == 8, f"tests expect 8 simulated CPU devices, got {jax.device_count()}"
    return make_mesh({"data": 8})
