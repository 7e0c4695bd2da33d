"""Assertions shared by tests."""

from __future__ import annotations

import numpy as np


def assert_same_features(got: np.ndarray, want: np.ndarray, rel: float = 1e-5) -> None:
    """``got`` equals ``want`` within ``rel`` of the features' own scale, and ``want`` is not degenerate.

    Random-init backbones at small sizes give features of about 1e-12, so an absolute tolerance such as 1e-5 passes
    any two arrays of the same shape; the scale-relative test and the spread check keep the comparison meaningful."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.abs(want).max())
    assert scale > 0 and np.isfinite(scale), "the reference features are all zero or not finite"
    assert len(want) < 2 or float(np.ptp(want, axis=0).max()) > 1e-3 * scale, "the reference rows are all the same"
    err = float(np.abs(got - want).max()) / scale
    assert err <= rel, f"relative difference {err:.2e} > {rel:.0e}"
