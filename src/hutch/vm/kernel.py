"""The guest kernel: the host's Debian cloud kernel (or ``--vm-kernel``), unpacked once into a cached vmlinux.

QEMU boots an uncompressed ELF ``vmlinux`` directly (PVH entry) and skips the bzImage's self-decompression,
which under TCG costs a large share of a cold boot. The bzImage's setup header says where the compressed
payload is (boot protocol 2.08+: ``payload_offset``/``payload_length``); its magic says how it is packed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from hutch.errors import HutchError
from hutch.vm.cachekey import short_key

_SETUP_SECTS = 0x1F1
_HEADER_MAGIC = 0x202  # "HdrS"
_KERNEL_VERSION = 0x20E  # offset (from 0x200) of the version string
_PAYLOAD = 0x248


class Kernel:
    """A guest kernel image and the release its modules live under (``/lib/modules/<release>``)."""

    __slots__ = ("path", "release")

    def __init__(self, path: Path, release: str) -> None:
        self.path = path
        self.release = release

    @property
    def modules_dir(self) -> Path:
        return Path("/lib/modules") / self.release


def find_kernel(explicit: str | None = None) -> Kernel:
    """``--vm-kernel PATH`` or the newest ``/boot/vmlinuz-*cloud*`` (Debian's linux-image-cloud-amd64)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise HutchError(f"--vm-kernel {explicit}: no such file")
    else:
        found = sorted(f"/boot/{n}" for n in _listdir("/boot") if n.startswith("vmlinuz-") and "cloud" in n)
        if not found:
            raise HutchError(
                "no guest kernel for --isolation vm: install linux-image-cloud-amd64 or give --vm-kernel PATH"
            )
        path = Path(found[-1])
    return Kernel(path, release_of(path))


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def release_of(path: Path) -> str:
    """The kernel release, from the bzImage header's version string (``6.1.0-56-cloud-amd64 (...)``)."""
    with open(path, "rb") as f:
        head = f.read(0x10000)
    if len(head) < 0x300 or head[_HEADER_MAGIC : _HEADER_MAGIC + 4] != b"HdrS":
        raise HutchError(f"guest kernel {path}: not a bzImage (no HdrS header)")
    (offset,) = struct.unpack_from("<H", head, _KERNEL_VERSION)
    start = offset + 0x200
    version = head[start : head.find(b"\0", start)].decode(errors="replace")
    release = version.split(" ", 1)[0]
    if not release:
        raise HutchError(f"guest kernel {path}: no version string in its header")
    return release


def payload(image: bytes) -> bytes:
    """The compressed kernel inside a bzImage."""
    setup_sects = image[_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", image, _PAYLOAD)
    start = (setup_sects + 1) * 512 + offset
    return image[start : start + length]


def decompress(data: bytes) -> bytes:
    """The payload's format by its magic; LZ4 (Debian's choice) goes through the ``lz4`` tool."""
    if data[:2] == b"\x1f\x8b":
        import zlib

        return zlib.decompressobj(31).decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        import lzma

        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if data[:4] == b"\x02\x21\x4c\x18":
        return _lz4_legacy(data)
    raise HutchError(f"guest kernel: unknown compression (magic {data[:4].hex()})")


def _lz4_legacy(data: bytes) -> bytes:
    try:
        import subprocess

        proc = subprocess.run(["lz4", "-dc"], input=data, capture_output=True, check=False)
    except FileNotFoundError:
        raise HutchError("guest kernel is LZ4-compressed and the lz4 tool is missing (apt install lz4)")
    if not proc.stdout:
        raise HutchError(f"guest kernel: lz4 failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def vmlinux(kernel: Kernel, cache: Path) -> Path:
    """The uncompressed ELF kernel, cached per (path, size, mtime) of the bzImage."""
    st = kernel.path.stat()
    key = short_key(f"{kernel.path}:{st.st_size}:{st.st_mtime_ns}")
    target = cache / f"vmlinux-{kernel.release}-{key}"
    if target.exists():
        return target
    image = kernel.path.read_bytes()
    elf = decompress(payload(image))
    if elf[:4] != b"\x7fELF":
        raise HutchError(f"guest kernel {kernel.path}: payload is not an ELF image")
    from hutch.fsutil import atomic_write

    os.makedirs(cache, exist_ok=True)
    atomic_write(target, elf, durable=False)
    return target
