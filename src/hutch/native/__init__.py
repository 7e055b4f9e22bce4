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

    The binary's name carries its sources' sizes and mtimes (``version``), so an upgrade never runs a
    stale build, and a few stats are all a warm call costs. ``static``: linked statically and optimised
    for size, for a guest whose initramfs has no C library (``vmagent``; Debian's libc6-dev ships libc.a).
    """
    kind = "-static" if static else ""
    target = cache_dir / f"hutch-{name}{kind}-{version(name)}"
    if os.access(target, os.X_OK):
        return str(target)
    return _compile(name, source_files(name), target, ["-static", "-Os"] if static else ["-O2"], static)


def source_files(name: str) -> list[Path]:
    """``name.c``, or the .c files of the directory ``name`` (a program of several modules and a header)."""
    return [p for p in _own_sources(name) if p.suffix == ".c"]


def version(name: str) -> str:
    """Sizes and mtimes of ``name``'s sources and of the shared headers: a build's name, so that an
    upgrade never runs a stale build and a warm call costs a few stats."""
    import zlib

    parts = _own_sources(name) + sorted(_SOURCES.glob("*.h"))  # the headers every program may include
    facts = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in parts).encode()
    return f"{zlib.crc32(facts):08x}{zlib.adler32(facts):08x}"  # distinct names, no hashlib (OpenSSL)


def _own_sources(name: str) -> list[Path]:
    single = _SOURCES / f"{name}.c"
    own = [single] if single.exists() else sorted((_SOURCES / name).glob("*.[ch]"))
    if not own:
        raise HutchError(f"hutch-{name}: no source in {_SOURCES}")
    return own


def _multiarch() -> str:
    machine = os.uname().machine
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, f"{machine}-linux-gnu")


def _compile(name: str, sources: list[Path], target: Path, flags: list[str], static: bool = False) -> str:
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
        raise HutchError(f"building hutch-{name} needs a C compiler: install gcc (or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    result = subprocess.run(
        [compiler, *flags, "-s", "-o", str(temp), *map(str, sources)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        temp.unlink(missing_ok=True)
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise HutchError(f"building hutch-{name} with {compiler} failed: {detail}")
    os.rename(temp, target)  # atomic: concurrent builders each rename a complete binary
    prefix = f"hutch-{name}{'-static' if static else ''}-"
    for old in target.parent.glob(f"{prefix}*"):
        if old != target and not old.name[len(prefix) :].startswith("static-"):
            old.unlink(missing_ok=True)  # an older source's build (a running copy keeps its inode)
    return str(target)
