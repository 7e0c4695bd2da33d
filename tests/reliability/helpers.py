"""Real subprocesses for the fault tests: the CLI, optionally under RLIMIT_FSIZE or with a kill point."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
# the small, fast featurize of these tests: random-init MobileNetV2 at 32x32 on TF (no export)
FEAT = ["--backbone", "mobilenetv2", "--weights", "none", "--image-size", "32x32", "--subjects", "none",
        "--engine", "tf", "--batch-size", "4", "--no-progress"]
FAST = dict(backbone="mobilenetv2", weights="none", image_size="32x32", subjects="none", progress=False, engine="tf",
            batch_size=4)


def env() -> dict[str, str]:
    """This environment with the worktree first on the path (the children import this checkout)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}


def _limit(fsize: int | None) -> Any:
    if fsize is None:
        return None

    def set_limit() -> None:  # in the child, before exec; Python ignores SIGXFSZ, so a write gets EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return set_limit


def command(args: Sequence[str], *, kill: Sequence[str] = ()) -> list[str]:
    """The argv of the real CLI, through ``tests.reliability.killpoint`` when kill points are given."""
    if kill:
        return [sys.executable, "-m", "tests.reliability.killpoint", *kill, "--", *map(str, args)]
    return [sys.executable, str(REPO / "cli.py"), *map(str, args)]


def run(args: Sequence[str], *, fsize: int | None = None, kill: Sequence[str] = (), timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the CLI to the end (``fsize``: RLIMIT_FSIZE in bytes for the child)."""
    return subprocess.run(command(args, kill=kill), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_limit(fsize))


def popen(args: Sequence[str], *, kill: Sequence[str] = (), stderr: Path) -> subprocess.Popen[str]:
    """Start the CLI; its stderr goes to a file (a failing child explains itself)."""
    fh = open(stderr, "w")  # noqa: SIM115 - closed by the child's exit; the test reads the file
    return subprocess.Popen(command(args, kill=kill), cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=fh, text=True)


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of stderr, asserting there is no traceback (a clean failure has exactly one)."""
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]
