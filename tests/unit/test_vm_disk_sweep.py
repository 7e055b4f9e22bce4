"""vm.rootdisk.sweep: cached erofs disks go with their image's top layer; dead builds' temp files go."""

import os

from hutch.vm.rootdisk import sweep


def test_sweep_keeps_disks_of_present_layers_and_live_builds(tmp_path):
    layers, cache = tmp_path / "layers", tmp_path / "disks"
    (layers / "aaa").mkdir(parents=True)
    cache.mkdir()
    live_tmp = f".ccc.erofs.tmp-{os.getpid()}"
    for name in ("aaa.erofs", "bbb.erofs", "empty.erofs", live_tmp, ".ddd.erofs.tmp-0"):
        (cache / name).write_bytes(b"x" * 4096)
    freed = sweep(cache, layers)
    assert sorted(os.listdir(cache)) == sorted([live_tmp, "aaa.erofs", "empty.erofs"])
    assert freed >= 2 * 4096
    assert sweep(tmp_path / "missing", layers) == 0
