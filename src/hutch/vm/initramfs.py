"""The guest's initramfs: hutch's guest agent as /init (``native/vmagent/``, compiled statically on the
host) and only the kernel modules the guest needs; nothing else.

Built once per (kernel release, agent source, this module) and cached. It is a newc cpio compressed with LZ4
in the kernel's legacy framing (gzip when the lz4 tool is missing); under TCG the kernel's LZ4 decompressor
cost nothing measurable against the uncompressed archive (QEMU's CPU time for a boot to ``poweroff``, 3
interleaved runs each on a loaded host). Modules are taken with their dependencies from ``modules.dep`` and
stored decompressed (``.ko.xz``/``.ko.zst``) with their signature stripped (kept when the kernel's config
forces signatures), listed in an order the kernel accepts (dependencies first), so the agent loads each
with one ``finit_module`` and the kernel checks no signature (hashing every module and verifying it under
TCG). The host's ``/lib/modules`` is what hutch trusts anyway, and they load before any container code
runs; the guest kernel notes them as unsigned (taint flag E), nothing more.

There was a busybox init script before (``mount -a``, ``modprobe -a``, a loop over the ports' names, then
an exec of the agent): under TCG every exec of the 2 MB busybox is slow, and a cold boot spent ~570 ms
from the kernel's exec of /init to the agent. The agent does the same in system calls.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hutch.errors import HutchError
from hutch.vm.cachekey import short_key

# What a read-only erofs root under a tmpfs overlay with stdio on virtio-serial needs. virtio_mmio finds
# the microvm's devices (through ACPI); libcrc32c is erofs's only dependency.
MODULES = ("virtio_mmio", "virtio_blk", "virtio_console", "erofs", "overlay")
# Loaded by the agent's set-up steps only when the container has volumes (virtiofs needs fuse).
VOLUME_MODULES = ("virtiofs",)
# Loaded by the init before "ready" only when the guest has a network card (``hutch.net`` on the kernel
# command line), so a --network none guest, and its template, never pay for them.
NET_MODULES = ("virtio_net",)


def module_name(path: str) -> str:
    """``kernel/fs/erofs/erofs.ko.xz`` -> ``erofs`` (the kernel treats - and _ alike)."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` -> name -> (path, dependency paths)."""
    result = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            result[module_name(path)] = (path, deps.split())
    return result


def load_order(
    wanted: tuple[str, ...], deps: dict[str, tuple[str, list[str]]], builtin: set[str]
) -> list[str]:
    """Module paths in an order ``insmod`` accepts: every dependency before the module that needs it.

    ``modules.dep`` lists a module's dependencies deepest last, so they are loaded in reverse. Built-in
    modules are skipped; a module that is neither built in nor in ``modules.dep`` is an error.
    """
    order: list[str] = []

    def add(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps[module_name(path)][1]):
            add(dep)
        order.append(path)

    for name in wanted:
        if name in builtin:
            continue
        if name not in deps:
            raise HutchError(f"guest kernel has no {name} driver (neither built in nor a module)")
        add(deps[name][0])
    return order


class Cpio:
    """A newc ("070701") archive written in memory; the kernel's initramfs format."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._ino = 1

    def _entry(self, name: str, mode: int, body: bytes = b"", nlink: int = 1, rdev: tuple = (0, 0)) -> None:
        fields = (self._ino, mode, 0, 0, nlink, 0, len(body), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08x" % v for v in fields) + name.encode() + b"\0"
        self.data += header + b"\0" * (-len(header) % 4)
        self.data += body + b"\0" * (-len(body) % 4)

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, body: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, body)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.data += b"\0" * (-len(self.data) % 512)
        return bytes(self.data)


def _read_module(path: Path, keep_signature: bool = False) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        import lzma

        data = lzma.decompress(data)
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    elif path.name.endswith(".gz"):
        import gzip

        data = gzip.decompress(data)
    return data if keep_signature else strip_signature(data)


def signatures_enforced(release: str, boot: Path = Path("/boot")) -> bool:
    """A kernel built with ``CONFIG_MODULE_SIG_FORCE`` refuses unsigned modules: keep their signatures."""
    try:
        return "\nCONFIG_MODULE_SIG_FORCE=y\n" in "\n" + (boot / f"config-{release}").read_text()
    except OSError:
        return False


_SIG_MAGIC = b"~Module signature appended~\n"
_SIG_INFO = 12  # struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], be32 sig_len


def strip_signature(module: bytes) -> bytes:
    """The module without its appended signature (``scripts/sign-file``'s layout: the module, the signature,
    a struct module_signature, the magic string); an unsigned module as it is."""
    if not module.endswith(_SIG_MAGIC) or len(module) < len(_SIG_MAGIC) + _SIG_INFO:
        return module
    info_end = len(module) - len(_SIG_MAGIC)
    sig_len = int.from_bytes(module[info_end - 4 : info_end], "big")
    start = info_end - _SIG_INFO - sig_len
    return module[:start] if start > 0 else module


def _builtin(modules_dir: Path) -> set[str]:
    try:
        return {module_name(line) for line in (modules_dir / "modules.builtin").read_text().split()}
    except OSError:
        return set()


def build(modules_dir: Path, agent: bytes) -> bytes:
    """The archive for a kernel whose modules are in ``modules_dir``, with the guest agent as /init."""
    try:
        deps = parse_modules_dep((modules_dir / "modules.dep").read_text())
    except OSError as err:
        raise HutchError(f"guest kernel modules: cannot read {modules_dir}/modules.dep: {err.strerror}")
    order = load_order(MODULES, deps, _builtin(modules_dir))
    cpio = Cpio()
    # /dev/console: the kernel opens it as init's stdio (the console log on the host) before devtmpfs
    for name in ("dev", "proc", "sys", "lib", "lib/modules", "newroot", "lower", "rw"):
        cpio.directory(name)
    cpio.device("dev/console", 5, 1)
    cpio.file("init", agent, 0o755)
    volume_order = [p for p in load_order(VOLUME_MODULES, deps, _builtin(modules_dir)) if p not in order]
    net_order = [p for p in load_order(NET_MODULES, deps, _builtin(modules_dir)) if p not in order]
    keep = signatures_enforced(modules_dir.name)
    listings = (("modules", order), ("modules.volumes", volume_order), ("modules.net", net_order))
    for listing, paths in listings:
        names = []
        for path in paths:
            name = module_name(path) + ".ko"
            cpio.file(f"lib/modules/{name}", _read_module(modules_dir / path, keep))
            names.append(name)
        cpio.file(listing, ("\n".join(names) + "\n").encode())
    return cpio.finish()


def cached(modules_dir: Path, cache: Path) -> Path:
    """The initramfs for ``modules_dir``, built on first use; keyed by what goes into it."""
    from hutch import native

    key = [f"agent:{native.version('vmagent')}"]
    for part in (modules_dir / "modules.dep", Path(__file__)):
        try:
            st = part.stat()
        except OSError:
            continue
        key.append(f"{part}:{st.st_size}:{st.st_mtime_ns}")
    prefix = f"initramfs-{modules_dir.name}-"
    target = cache / f"{prefix}{short_key(';'.join(key))}.cpio"
    if not target.exists():
        from hutch.fsutil import atomic_write

        agent = Path(native.program("vmagent", cache / "bin", static=True)).read_bytes()
        data = compress(build(modules_dir, agent))
        os.makedirs(cache, exist_ok=True)
        atomic_write(target, data, durable=False)
        for old in cache.glob(f"{prefix}*.cpio"):
            if old != target:
                old.unlink(missing_ok=True)  # built for an older agent or module set
    return target


def compress(data: bytes) -> bytes:
    """LZ4 legacy frames (what the kernel's unlz4 reads), else gzip."""
    import subprocess

    try:
        proc = subprocess.run(["lz4", "-l", "-9", "-c"], input=data, capture_output=True, check=True)
        return proc.stdout
    except (OSError, subprocess.CalledProcessError):
        import gzip

        return gzip.compress(data, 6, mtime=0)
