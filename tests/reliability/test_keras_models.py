"""``.keras`` baselines are signed like the bundles: predict through the real CLI, and refusals of tampered or
unsigned files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_images
from tests.reliability.helpers import error_lines, run

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def test_predict_on_a_keras_baseline_through_the_cli_and_refusals(tmp_path: Path) -> None:
    from classify.cnn import predict_files, train_baseline

    data, art = tmp_path / "data", tmp_path / "art"
    write_images(data, "kaggle", n_per_class=3)
    res = train_baseline(data, model="scratch", weights="none", image_size="32x32", epochs=1, subjects="none",
                         batch_size=4, artifacts=art, progress=False)
    model = res.model_path
    assert Path(f"{model}.sig").is_file()
    images = sorted((data / "test").rglob("*.png"))[:3]
    ok = run(["predict", "--model", model, "--csv", *images])
    assert ok.returncode == 0, ok.stderr
    table = pd.read_csv(io.StringIO(ok.stdout))
    probs, errors = predict_files(model, [str(p) for p in images])
    cols = [c for c in table.columns if c.startswith("p_")]
    assert len(table) == 3 and not any(errors)
    np.testing.assert_allclose(table[cols].to_numpy(), probs, atol=1e-4)  # the table rounds to 4 decimals

    side = model.with_suffix(".json")
    good = side.read_text()
    side.write_text(good.replace('"resize": "stretch"', '"resize": "pad"'))  # the sidecar is covered too
    bad = run(["predict", "--model", model, *images])
    lines = error_lines(bad.stderr)
    assert bad.returncode != 0 and len(lines) == 1 and "signature does not match" in lines[0], bad.stderr
    side.write_text(good)
    Path(f"{model}.sig").unlink()
    unsigned = run(["predict", "--model", model, *images])
    lines = error_lines(unsigned.stderr)
    assert unsigned.returncode != 0 and len(lines) == 1 and "no signature file" in lines[0], unsigned.stderr
