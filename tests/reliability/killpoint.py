"""Run the real CLI (or a code snippet) in this process, with SIGKILL or a signal file at a chosen point.

``python -m tests.reliability.killpoint TARGET,N,ACTION ... -- CLI ARGS`` (or ``-- -c CODE``). TARGET is
``module:attr`` (``featurize.store:write_part``, ``featurize.target:Sources.blocks``); ACTION is one of

- ``before`` / ``after``: SIGKILL this process just before / after the N-th call;
- ``item``: the target returns an iterator; SIGKILL when its consumer asks for the item after the N-th
  (the N-th item has been used: for ``Sources.blocks``, written into the temp cache);
- ``touch=PATH``: the target returns an iterator; create PATH once its N-th item was handed out (so a test
  knows the run got that far before it sends a real signal from outside).

A SIGKILL sent by the process to itself is exactly what ``kill -9`` does; the point is only chosen, not faked.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterator


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(target: str, n: int, action: str) -> None:
    """Wrap ``target`` so that ``action`` happens at its ``n``-th call (or item)."""
    mod_name, attr = target.split(":")
    owner: Any = importlib.import_module(mod_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    calls = [0]

    def items(it: Iterator[Any]) -> Iterator[Any]:
        for k, x in enumerate(it, start=1):
            if action.startswith("touch=") and k == n:
                Path(action[len("touch="):]).touch()
            yield x
            if action == "item" and k == n:
                _die()

    def wrapper(*a: Any, **kw: Any) -> Any:
        calls[0] += 1
        hit = calls[0] == n
        if action == "before" and hit:
            _die()
        out = real(*a, **kw)
        if action == "after" and hit:
            _die()
        if action == "item" or action.startswith("touch="):
            return items(out) if calls[0] == 1 else out
        return out

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    cut = sys.argv.index("--")
    for spec in sys.argv[1:cut]:
        t, count, act = spec.split(",", 2)
        install(t, int(count), act)
    rest = sys.argv[cut + 1:]
    if rest[:1] == ["-c"]:  # -c CODE ARGS...: CODE sees sys.argv[1:] == ARGS
        sys.argv = ["-c", *rest[2:]]
        exec(compile(rest[1], "<killpoint>", "exec"), {"__name__": "__killpoint__"})  # noqa: S102 - test harness
    else:
        sys.argv = ["alzmri", *rest]
        import cli

        sys.exit(cli.main())
