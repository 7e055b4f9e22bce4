"""Atomic writes and the container-directory removal that must never follow a planted symlink."""

import os

from hutch.fsutil import atomic_write, remove_tree


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    atomic_write(target, b"new contents", mode=0o600)
    assert target.read_bytes() == b"new contents"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_remove_tree_does_not_follow_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    tree = tmp_path / "container"
    (tree / "upper" / "deep" / "deeper").mkdir(parents=True)
    (tree / "upper" / "deep" / "file").write_text("x")
    os.symlink(outside, tree / "upper" / "link-to-dir")
    os.symlink(outside / "precious", tree / "upper" / "deep" / "link-to-file")
    os.mkfifo(tree / "upper" / "fifo")
    (tree / "work" / "work").mkdir(parents=True, mode=0)
    remove_tree(tree)
    assert not tree.exists()
    assert (outside / "precious").read_text() == "keep me"


def test_remove_tree_of_missing_path_is_fine(tmp_path):
    remove_tree(tmp_path / "nothing-here")
