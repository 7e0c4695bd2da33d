"""``--inner-slices N``: slice heads grid-search on N evenly spaced slices per subject, then refit on every row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

import classify.evaluate as ev
from classify.evaluate import evaluate
from classify.protocols import thin_per_subject
from classify.report import head_row
from featurize.errors import DataError
from tests.classify.test_evaluate import synthetic


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=8), k=st.integers(1, 6), seed=st.integers(0, 99))
def test_thinning_keeps_at_most_k_evenly_spaced_rows_of_every_subject(sizes: list[int], k: int, seed: int) -> None:
    groups = np.repeat(np.array([f"s{i}" for i in range(len(sizes))], object), sizes)
    groups = groups[np.random.default_rng(seed).permutation(len(groups))]  # subjects interleaved
    keep = thin_per_subject(groups, k)
    assert np.all(np.diff(keep) > 0)
    for i, n in enumerate(sizes):
        rows = np.flatnonzero(groups == f"s{i}")
        kept = np.intersect1d(keep, rows)
        assert len(kept) == min(n, k)  # every subject stays, with min(n, k) rows
        if n > k >= 2:  # the first and the last slice are kept, the rest spread between them
            assert kept[0] == rows[0] and kept[-1] == rows[-1]


def test_grid_sees_the_thinned_rows_and_the_winner_is_refitted_on_all(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = synthetic(subjects=6, slices=8)
    seen: list[int] = []
    real = ev.GridSearchCV

    class Spy(real):  # type: ignore[misc, valid-type]
        def fit(self, X, y=None, **kw):  # noqa: ANN001, ANN003, ANN201
            seen.append(len(X))
            return super().fit(X, y, **kw)

    monkeypatch.setattr(ev, "GridSearchCV", Spy)
    res = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1, inner_slices=2)
    n = len(fs.y)
    # the 5 outer training parts and the final selection on all 24 subjects: 2 of the 8 slices of each subject
    subjects = [len(set(fs.subject[tr])) for tr, _ in res.folds] + [24]
    assert sorted(seen) == sorted(2 * k for k in subjects) and len(res.folds) == 5
    # the deployed model is the selected candidate fitted on every row, not on the thinned ones
    params = {k.removeprefix("clf__"): v for k, v in res.best_params.items()}
    again = clone(res.model).set_params(**{f"clf__{k}": v for k, v in params.items()}).fit(fs.X, fs.y)
    np.testing.assert_allclose(res.model.named_steps["clf"].coef_, again.named_steps["clf"].coef_, rtol=1e-6)
    assert res.inner_slices == 2
    assert head_row(fs, res, task="stages", model_path=None)["selection"].endswith("grid on 2 slices/subject")
    # 0 (the default) is every slice, and says nothing
    seen.clear()
    full = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1, inner_slices=0)
    assert max(seen) == n and full.inner_slices is None
    assert "slices/subject" not in head_row(fs, full, task="stages", model_path=None)["selection"]


def test_subject_level_rows_are_not_thinned() -> None:
    res = evaluate(synthetic(subjects=6, slices=4), "logreg", protocol="subject-cv", n_jobs=1, level="subject",
                   inner_slices=2)
    assert res.inner_slices is None and res.n_train == 24


def test_negative_inner_slices_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="inner slices"):
        evaluate(synthetic(), "logreg", protocol="subject-cv", n_jobs=1, inner_slices=-1)
