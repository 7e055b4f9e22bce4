#!/usr/bin/env python3
"""hutch's own start-up, A/B between two source trees (e.g. main's and a branch's), interleaved.

A change of a few milliseconds to hutch's start-up is lost in one machine's noise unless both versions run
in turns under the same load; this runs them so and reports medians:

- ``vm``: launch to QEMU's fork of a template clone (``hutch run --rm --isolation vm --network none
  busybox true``, the supervisor's ``qemu_forked`` stamp, see bench/vm.py), and its launch-to-exit;
- ``run``: launch-to-exit of a plain ``hutch run --rm busybox true``.

Each tree gets its own temporary root (the microVM's cached initramfs, and with it the template, is keyed
by the path of the source that builds it, so two trees sharing a root would rebuild it in turn), warmed
by one untimed run of each kind. Both trees run with the same interpreter (this checkout's .venv) and
their bytecode compiled first (``compileall``; PYTHONDONTWRITEBYTECODE would otherwise leave them none).

    .venv/bin/python bench/startup.py --a /path/to/main/src --b src [--runs 20] [--only vm|run]

Needs root (and for ``vm`` qemu-system-x86, erofs-utils, linux-image-cloud-amd64). Everything lives in
temporary roots, removed at the end with their networks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import busybox_rootfs  # noqa: E402
from hutch_networks import teardown_networks  # noqa: E402

PY = str(REPO / ".venv" / "bin" / "python")
VM_ARGS = ("--isolation", "vm", "--network", "none")


def hutch(src: Path, root: Path, *args: str, timings: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(src), HUTCH_CGROUP_PARENT="hutch-bench-startup")
    if timings is not None:
        env["HUTCH_VM_TIMINGS"] = str(timings)
    return subprocess.run([PY, "-m", "hutch", "--root", str(root), *args], env=env, capture_output=True)


def timed_run(src: Path, root: Path, vm: bool, stamps: Path) -> dict[str, float]:
    """One ``hutch run --rm busybox true``: launch-to-exit, and for a microVM launch to QEMU's fork (ms)."""
    stamps.unlink(missing_ok=True)
    launch = time.time()
    proc = hutch(src, root, "run", "--rm", *(VM_ARGS if vm else ()), "busybox", "true", timings=stamps)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"bench: {src}: hutch run failed: {proc.stderr.decode(errors='replace')}")
    if not vm:
        return {"run_launch_to_exit": (end - launch) * 1000}
    forked = json.loads(stamps.read_text().splitlines()[-1])["qemu_forked"]
    return {"vm_launch_to_qemu_fork": (forked - launch) * 1000, "vm_launch_to_exit": (end - launch) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, required=True, help="the first tree's src directory (e.g. main's)")
    ap.add_argument("--b", type=Path, required=True, help="the second tree's src directory")
    ap.add_argument("--runs", type=int, default=20, help="rounds (each runs both trees, order alternating)")
    ap.add_argument("--only", choices=("vm", "run"), help="time only one kind of run")
    ap.add_argument("--json", type=Path, help="also write the medians here")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root")
    trees = {"a": opts.a.resolve(), "b": opts.b.resolve()}
    kinds = [k == "vm" for k in ("vm", "run") if opts.only in (None, k)]
    for src in trees.values():
        if not (src / "hutch" / "__init__.py").is_file():
            raise SystemExit(f"bench: {src} is not a src directory with the hutch package")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="")
        subprocess.run([PY, "-m", "compileall", "-q", str(src)], env=env, capture_output=True, check=True)
    with tempfile.TemporaryDirectory(prefix="hutch-bench-startup-") as tmp:
        tar = Path(tmp) / "busybox.tar"
        busybox_rootfs.build_rootfs_tar(tar)
        roots = {name: Path(tmp) / f"root-{name}" for name in trees}
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        try:
            for name, src in trees.items():
                proc = hutch(src, roots[name], "import", str(tar), "busybox")
                if proc.returncode != 0:
                    raise SystemExit(f"bench: import failed: {proc.stderr.decode(errors='replace')}")
                for vm in kinds:  # warm-up: builds the vm artefacts and the template, the default network
                    timed_run(src, roots[name], vm, Path(tmp) / "stamps.json")
            for i in range(opts.runs):
                for name in trees if i % 2 == 0 else reversed(list(trees)):
                    for vm in kinds:
                        result = timed_run(trees[name], roots[name], vm, Path(tmp) / "stamps.json")
                        for key, ms in result.items():
                            samples[name].setdefault(key, []).append(ms)
        finally:
            for root in roots.values():
                teardown_networks(REPO / ".venv" / "bin" / "hutch", root)
    medians = {name: {k: round(statistics.median(v), 1) for k, v in s.items()} for name, s in samples.items()}
    print(f"{'median ms':26} {'a':>9} {'b':>9} {'b - a':>8}   ({opts.runs} rounds)")
    print(f"a = {trees['a']}\nb = {trees['b']}")
    for key in medians["a"]:
        a, b = medians["a"][key], medians["b"][key]
        print(f"{key:26} {a:9.1f} {b:9.1f} {b - a:+8.1f}")
    if opts.json:
        opts.json.write_text(json.dumps({"a": str(trees["a"]), "b": str(trees["b"]), "medians": medians}))


if __name__ == "__main__":
    main()
