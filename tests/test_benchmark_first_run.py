"""benchmarks/first_run.py: the ratios it reports are per round, against the tight TF run of the same round."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.first_run import draw_sets, report


def test_ratios_are_taken_against_the_same_round() -> None:
    rows = [
        {"round": 0, "what": "tight TF", "wall": 20.0, "phases": {"import": 5.0, "loop": 14.0}, "tf": True},
        {"round": 0, "what": "first-ever (after)", "wall": 15.0, "phases": {"import": 5.0, "export": 3.0}, "tf": True},
        {"round": 1, "what": "tight TF", "wall": 30.0, "phases": {"import": 6.0, "loop": 22.0}, "tf": True},
        {"round": 1, "what": "first-ever (after)", "wall": 15.0, "phases": {"import": 5.0, "export": 3.0}, "tf": True},
    ]
    md = report({"machine": "m", "source": "s", "n": 8, "rounds": 2, "engine": "auto", "weights": "none", "rows": rows})
    assert "| first-ever (after) | 15.0 / 15.0 | 0.75 / 0.50 | yes |" in md
    # phases of round 0, and "other" = wall - phases
    assert "| run | import | loop | export | other |" in md
    assert "| tight TF | 5.00 | 14.00 |  | 1.00 |" in md
    assert "| first-ever (after) | 5.00 |  | 3.00 | 7.00 |" in md


def test_sets_are_disjoint_and_keep_the_layout(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("NonDemented", "MildDemented"):
            (root / split / cls).mkdir(parents=True)
            for i in range(5):
                (root / split / cls / f"{i}.png").write_bytes(b"x")
    sets = draw_sets(root, 6, 3, tmp_path / "work")
    names = [sorted(str(p.resolve()) for p in s.glob("*/*/*")) for s in sets]
    assert all(len(n) == 6 for n in names)
    assert len(set().union(*map(set, names))) == 18  # no slice in two sets
    assert all(p.parent.parent.name in ("train", "test") for s in sets for p in s.glob("*/*/*"))
    with pytest.raises(SystemExit, match="lower --n or --rounds"):
        draw_sets(root, 10, 3, tmp_path / "more")
