"""The documented exit codes, asserted on the real CLI in fresh processes; Ctrl-C (a real SIGINT) and resume."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.conftest import write_images
from tests.reliability.helpers import FEAT, error_lines, popen, run


@pytest.mark.parametrize("case, code", [("bad-option", 2), ("no-data", 3), ("no-cache", 4), ("no-weights", 5)])
def test_exit_codes_on_the_real_cli(tmp_path: Path, case: str, code: int) -> None:
    data, art = tmp_path / "data", tmp_path / "art"
    write_images(data, "kaggle", n_per_class=2)
    args = {
        "bad-option": ["featurize", "--data", data, "--backbone", "nope", "--artifacts", art],
        "no-data": ["featurize", "--data", tmp_path / "missing", "--artifacts", art, *FEAT],
        "no-cache": ["classify", "--data", data, "--artifacts", art, "--no-progress"],
        "no-weights": ["featurize", "--data", data, "--weights", tmp_path / "missing.weights.h5", "--artifacts", art],
    }[case]
    proc = run(args, timeout=120)
    assert proc.returncode == code, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert not art.exists() or not list(art.rglob("*.h5"))  # refused before anything was computed


@pytest.mark.tf
@pytest.mark.slow
def test_sigint_to_a_real_featurize_exits_130_and_the_rerun_resumes(tmp_path: Path) -> None:
    data, art = tmp_path / "data", tmp_path / "art"
    write_images(data, "kaggle", n_per_class=25)  # 100 images, 25 batches of 4
    ready, log = tmp_path / "ready", tmp_path / "stderr.txt"
    args = ["featurize", "--data", data, "--artifacts", art, *FEAT]
    # the child only says when its 6th batch was decoded; the interrupt is a real SIGINT from here
    proc = popen(args, kill=[f"featurize.pipeline:image_batches,6,touch={ready}"], stderr=log)
    try:
        deadline = time.time() + 240
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert ready.exists(), log.read_text()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    err = log.read_text()
    assert code == 130, err
    lines = error_lines(err)
    assert len(lines) == 1 and "rerun the same command to resume" in lines[0], err
    assert not list(art.glob("features/*/*.h5"))  # no cache yet, only the journal
    again = run(args)
    assert again.returncode == 0, again.stderr
    done = [ln for ln in again.stderr.splitlines() if ln.startswith("resuming: ")]
    assert done, again.stderr
    n = int(done[0].split()[1])
    assert 20 <= n < 100  # the batches finished before the interrupt (>= 5 of them) were journaled and reused
    import featurize

    assert len(featurize.load(next(art.glob("features/*/*.h5"))).paths) == 100
