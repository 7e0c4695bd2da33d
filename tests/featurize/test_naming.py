"""The one slug reproduces every name earlier versions wrote (dataset ids, bundles, plots, export keys, cards), so
nothing cached is renamed."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from featurize.naming import slug

# the five hand-written slugs that `slug` replaced, as they were
OLD = {
    "dataset": (lambda t: re.sub(r"[^A-Za-z0-9._-]+", "_", t).strip("_") or "data", dict(default="data")),
    "engines": (lambda t: re.sub(r"[^A-Za-z0-9._+-]+", "_", t).strip("._") or "model", dict(keep="._+-", strip="._", default="model")),
    "modelcard": (lambda t: re.sub(r"[^A-Za-z0-9._+-]+", "_", t), dict(keep="._+-", strip="")),
    "bundle/plots": (lambda t: re.sub(r"[^A-Za-z0-9._-]+", "_", t).strip("_") or "x", {}),
}


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_slug_is_each_old_name(text: str) -> None:
    for name, (old, kwargs) in OLD.items():
        want = old(text)
        if name == "modelcard" and not want:
            continue  # a card name is never empty (it always has the backbone's name)
        assert slug(text, **kwargs) == want, name


def test_examples() -> None:
    assert slug("26 (20).jpg") == "26_20_.jpg"
    assert slug("a+b c", keep="._+-") == "a+b_c" and slug("///") == "x"
