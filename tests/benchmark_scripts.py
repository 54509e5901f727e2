"""The scripts under benchmarks/ as importable modules, for their tests: both of its folders go on sys.path
(the scripts import their neighbours, e.g. ``workload`` and ``report``), so ``load("bench_grpo_step")`` is a
plain import."""

from __future__ import annotations

import importlib
import pathlib
import sys
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parents[1]
for _folder in (ROOT / "benchmarks" / "peers", ROOT / "benchmarks"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def load(name: str) -> ModuleType:
    """The benchmark script ``benchmarks/<name>.py`` (or ``benchmarks/peers/<name>.py``) as a module."""
    return importlib.import_module(name)
