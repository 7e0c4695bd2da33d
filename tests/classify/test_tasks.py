"""Label maps: presets, custom merges, bad specs."""

from __future__ import annotations

import numpy as np
import pytest

from classify.tasks import apply_label_map, parse_label_map
from featurize.errors import AlzmriError
from featurize.featureset import FeatureSet

STAGES = ["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]


def _fs() -> FeatureSet:
    y = np.array([0, 1, 2, 3, 0, 2])
    n = len(y)
    s = np.array([""] * n, dtype=object)
    return FeatureSet(X=np.zeros((n, 2), np.float32), y=y, paths=s, split=s, subject=s, sha1=s, class_names=list(STAGES))


def test_binary_preset_merges_all_dementia_stages() -> None:
    fs, task = apply_label_map(_fs(), "binary")
    assert task == "binary" and fs.class_names == ["healthy", "demented"]
    assert fs.y.tolist() == [0, 1, 1, 1, 0, 1]


def test_stages_is_identity_and_custom_map_reorders() -> None:
    fs, task = apply_label_map(_fs(), "stages")
    assert task == "stages" and fs.class_names == STAGES and fs.y.tolist() == [0, 1, 2, 3, 0, 2]
    task, mapping, order = parse_label_map("ModerateDemented=severe,MildDemented=mild,*=none", STAGES)
    assert order == ["severe", "mild", "none"] and mapping["VeryMildDemented"] == "none"


@pytest.mark.parametrize("spec, match", [("NonDemented=a", "does not map"), ("Foo=a,*=b", "not a class"),
                                         ("*=all", "fewer than two"), ("nonsense", "OLD=NEW")])
def test_bad_label_maps_are_explained(spec: str, match: str) -> None:
    with pytest.raises(AlzmriError, match=match):
        parse_label_map(spec, STAGES)
