"""The one file-name slug: dataset ids, bundle and plot names, export keys and model cards all go through it."""

from __future__ import annotations

import re


def slug(text: object, *, keep: str = "._-", strip: str = "_", default: str = "x") -> str:
    """``text`` with every run of characters other than letters, digits and ``keep`` replaced by ``_``, then
    ``strip`` taken off both ends; ``default`` when nothing is left. The options reproduce each caller's names
    exactly as earlier versions wrote them, so nothing cached is renamed."""
    out = re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", "_", str(text))
    return (out.strip(strip) if strip else out) or default
