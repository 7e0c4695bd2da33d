"""Progress bars for long work (rich), with a rate column in items/s."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callable that drives a bar showing count, rate and time left."""
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("[cyan]{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            if speed:
                bar.update(task, rate=f"{speed:.1f} {unit}/s")

        yield advance
