"""Hypothesis profiles for the fuzz tests: ``ci`` (default, bounded) and ``long`` (``HYPOTHESIS_PROFILE=long``).
No example database: nothing is written into the repo (a failure prints its example)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# ci: the same inputs on every run (a CI failure is reproducible, never a lucky draw); long: new random inputs
settings.register_profile("ci", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=2000, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
