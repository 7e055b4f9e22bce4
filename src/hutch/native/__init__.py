"""Small C programs hutch runs, shipped as source and compiled on first use.

why compile at run time: the monitor left behind by every detached container must cost a few hundred KiB,
which no Python process can (an idle interpreter holds several MiB of private memory). Building it here, once
per source version, keeps hutch a pure-Python package to install; the price is a C compiler on the host,
as Podman needs conmon.
"""

from __future__ import annotations

import os
from pathlib import Path

from hutch.errors import HutchError

_SOURCES = Path(__file__).parent


def program(name: str, cache_dir: Path, static: bool = False) -> str:
    """Path of the compiled ``name`` (``monitor`` -> ``monitor.c``), building it if this version lacks one.

    The binary's name carries the source's size and mtime, so an upgrade never runs a stale build, and a
    stat is all a warm call costs. ``static``: linked statically and optimised for size, for a guest whose
    initramfs has no C library (``vmagent``; Debian's libc6-dev ships libc.a).
    """
    source = _SOURCES / f"{name}.c"
    st = source.stat()
    kind = "-static" if static else ""
    target = cache_dir / f"hutch-{name}{kind}-{st.st_size:x}-{st.st_mtime_ns:x}"
    if os.access(target, os.X_OK):
        return str(target)
    return _compile(source, target, ["-static", "-Os"] if static else ["-O2"], static)


def _multiarch() -> str:
    machine = os.uname().machine
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, f"{machine}-linux-gnu")


def source_path(name: str) -> Path:
    """The C source of ``name``, for callers whose caches depend on it."""
    return _SOURCES / f"{name}.c"


def _compile(source: Path, target: Path, flags: list[str], static: bool = False) -> str:
    import shutil
    import subprocess

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if static and shutil.which("musl-gcc"):
        # why musl when it is there (Debian's musl-tools): a static glibc binary is ~800 KB, a musl one
        # ~75 KB, and the guest agent goes into an initramfs with a 2 MB budget. The kernel's headers
        # (linux/, asm/) come from the host's include dirs, searched after musl's own.
        compiler = "musl-gcc"
        flags = [*flags, "-idirafter", "/usr/include", "-idirafter", f"/usr/include/{_multiarch()}"]
    if not compiler:
        raise HutchError(f"building hutch-{source.stem} needs a C compiler: install gcc (or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    result = subprocess.run(
        [compiler, *flags, "-s", "-o", str(temp), str(source)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        temp.unlink(missing_ok=True)
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise HutchError(f"building hutch-{source.stem} with {compiler} failed: {detail}")
    os.rename(temp, target)  # atomic: concurrent builders each rename a complete binary
    return str(target)
