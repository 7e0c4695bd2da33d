"""Ctrl-C is recognised also when a C extension wrapped it (TensorFlow does, when SIGINT lands in a conversion)."""

from __future__ import annotations

import pytest
import typer

from featurize.errors import interrupted


def _chained(cause: bool) -> BaseException:
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as ki:
        try:
            if cause:
                raise TypeError("Expected `context` argument in EagerTensor constructor") from ki
            raise SystemError("__array__ returned a result with an exception set")
        except Exception as exc:  # noqa: BLE001
            return exc


def test_interrupted_finds_ctrl_c_in_the_cause_or_context_and_nothing_else() -> None:
    assert interrupted(KeyboardInterrupt())
    assert interrupted(_chained(cause=True)) and interrupted(_chained(cause=False))
    assert not interrupted(ValueError("bad image"))
    try:
        try:
            raise OSError("disk")
        except OSError:
            raise RuntimeError("while writing")  # noqa: B904
    except RuntimeError as exc:
        assert not interrupted(exc)


def test_the_cli_exits_130_on_a_wrapped_ctrl_c_and_passes_other_errors_on() -> None:
    import cli

    def wrapped() -> None:
        raise _chained(cause=False)

    with pytest.raises(typer.Exit) as out:
        cli._run(wrapped)
    assert out.value.exit_code == 130

    def other() -> None:
        raise ValueError("not an interrupt")

    with pytest.raises(ValueError):
        cli._run(other)
