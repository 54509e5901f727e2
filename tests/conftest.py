"""Test set-up: JAX on 8 simulated CPU devices, so every sharded code path runs on this machine.

The flag must be in the environment before JAX initialises its backend, hence at import of conftest.
"""

import os

_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICES_FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
