"""What ``hutch run`` pays before it starts anything: the parser must not load modules it does not use, and
the shortcuts taken for that must not change what the user sees."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hutch.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_run_parser_does_not_import_shutil() -> None:
    loaded = _modules_after(
        "from hutch.cli.main import build_parser\n"
        "build_parser('run').parse_args(['run', '--rm', '--isolation', 'vm', 'busybox', 'true'])"
    )
    assert "hutch.cli.containers" in loaded
    assert "shutil" not in loaded


@pytest.mark.parametrize("columns", ["50", "200", "", "0", "-3", "wide"])
def test_help_width_is_argparse_own(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    assert main._Formatter("hutch")._width == argparse.HelpFormatter("hutch")._width


def test_every_sub_parser_gets_the_formatter() -> None:
    parser = main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    container = sub.choices["container"]
    group = next(a for a in container._actions if isinstance(a, argparse._SubParsersAction))
    for p in (parser, sub.choices["run"], group.choices["run"]):
        assert p.formatter_class is main._Formatter
