"""hutch.native: programs of one source file or a directory of modules, rebuilt when a source changes."""

from __future__ import annotations

import os
import shutil

import pytest

import hutch.native as native

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler"
)


@pytest.fixture
def sources(tmp_path, monkeypatch):
    root = tmp_path / "src"
    (root / "multi").mkdir(parents=True)
    (root / "multi" / "common.h").write_text("int twice(int n);\n")
    (root / "multi" / "twice.c").write_text('#include "common.h"\nint twice(int n) { return 2 * n; }\n')
    (root / "multi" / "main.c").write_text('#include "common.h"\nint main(void) { return twice(21); }\n')
    monkeypatch.setattr(native, "_SOURCES", root)
    return root


def _status(path: str) -> int:
    return os.waitstatus_to_exitcode(os.system(path))


def test_a_directory_of_modules_is_one_program_renamed_when_a_header_changes(sources, tmp_path):
    bin_dir = tmp_path / "bin"
    first = native.program("multi", bin_dir)
    assert _status(first) == 42
    assert native.program("multi", bin_dir) == first  # warm: found by name
    header = sources / "multi" / "common.h"
    header.write_text("int twice(int n); /* changed */\n")
    os.utime(header, ns=(1, 2))
    second = native.program("multi", bin_dir)
    assert second != first and _status(second) == 42
    assert sorted(p.name for p in bin_dir.iterdir()) == [os.path.basename(second)]  # the old build is gone


def test_a_build_failure_names_the_program(sources, tmp_path):
    (sources / "multi" / "twice.c").write_text("int twice(int n) { return n +; }\n")
    with pytest.raises(native.HutchError, match="building hutch-multi with .* failed"):
        native.program("multi", tmp_path / "bin")
