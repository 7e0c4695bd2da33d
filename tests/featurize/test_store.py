"""The cache journal under the whole-backbone checksum: a resumed run knows what the checksum covers (no TF)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from featurize import store
from featurize.backbones import CHECKSUM_SCOPE
from featurize.run import settings_for
from featurize.target import CacheTarget


def _part(name: str) -> store.Part:
    empty = np.array([], dtype=str)
    return store.Part(path=np.array([name]), sha1=np.array(["s1"]), features=np.ones((1, 3), np.float32),
                      failed_path=empty, failed_sha1=empty, failed_reason=empty)


def test_an_interrupted_runs_journal_resumes_without_a_legacy_check(tmp_path: Path) -> None:
    settings = settings_for("mobilenetv2", "none", None, "avg", "stretch", "mid")
    cache = tmp_path / "c.h5"
    first = CacheTarget(settings, cache)
    first.open(print)
    first.accept_weights("ab" * 32, print)
    store.write_part(first.journal, _part("a.png"))  # then the run is interrupted

    again = CacheTarget(settings, cache)
    again.open(print)
    assert again.journal_scope == CHECKSUM_SCOPE and not again.legacy  # so the model card may serve the rest
    again.accept_weights("ab" * 32, print)
    assert again.src.known(("a.png", "s1")) and len(store.read_parts(again.journal)) == 1


def test_an_old_journal_with_a_truncated_models_checksum_is_kept_and_relabelled(tmp_path: Path) -> None:
    settings = settings_for("mobilenetv2", "none", None, "avg", "stretch", "mid")
    cache = tmp_path / "c.h5"
    journal = store.parts_dir(cache)
    journal.mkdir()
    (journal / "settings.json").write_text(json.dumps(store.identity({**settings, "weights_sha256": "old"})))
    store.write_part(journal, _part("a.png"))

    t = CacheTarget(settings, cache)
    t.open(print)
    assert t.legacy
    t.accept_weights("new", print, frozenset({"old"}))
    assert t.migrated and len(store.read_parts(t.journal)) == 1
    marker = json.loads((t.journal / "settings.json").read_text())
    assert marker["weights_sha256"] == "new" and marker["weights_sha256_scope"] == CHECKSUM_SCOPE
