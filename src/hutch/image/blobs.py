"""Content-addressed blob storage: ``<root>/blobs/sha256/<hex>``.

A blob is streamed into a temp file under ``<root>/tmp`` while it is hashed, fsynced, checked against the
digest and size the caller expected, and only then renamed into place. A blob that is in place is therefore
always complete and correct; readers still check the size on open because a disk can be tampered with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from hutch.errors import CorruptContent, NotFound
from hutch.fsutil import fsync_dir
from hutch.oci.digest import Digest

_CHUNK = 1 << 20

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO


def _tempfile():
    # tempfile pulls in shutil and random; only writers need it, never `hutch run`.
    import tempfile

    return tempfile


class BlobStore:
    """Blobs by digest; every write is verified and atomic."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).exists()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in the store")

    def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        """Store a small blob (manifest, config); returns its digest."""
        digest = Digest.of_bytes(data, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise CorruptContent(f"digest mismatch: expected {expected}, got {digest}")
        if not self.has(digest):
            self._commit(digest, lambda f: f.write(data))
        return digest

    def put_stream(
        self,
        stream: BinaryIO,
        expected: Digest | None = None,
        expected_size: int | None = None,
    ) -> tuple[Digest, int]:
        """Stream a blob in, hashing as it goes; on mismatch nothing is kept and CorruptContent is raised."""
        algorithm = expected.algorithm if expected else "sha256"
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _tempfile().mkstemp(dir=self.tmp, prefix="blob-")
        try:
            hasher = Digest(algorithm, "0" * 64).hasher()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    hasher.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = Digest(algorithm, hasher.hexdigest())
            if expected is not None and digest != expected:
                raise CorruptContent(f"blob digest mismatch: expected {expected}, got {digest}")
            if expected_size is not None and size != expected_size:
                raise CorruptContent(f"blob {digest}: size mismatch: expected {expected_size}, got {size}")
            self._place(Path(tmp_name), digest)
            return digest, size
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def put_file(self, path: Path, expected: Digest | None = None) -> tuple[Digest, int]:
        """Copy a file in as a blob (verified like any stream)."""
        with open(path, "rb") as src:
            return self.put_stream(src, expected)

    def open(self, digest: Digest, expected_size: int | None = None) -> BinaryIO:
        """Open a blob for reading; a wrong size on disk is reported, not silently used."""
        try:
            f = open(self.path(digest), "rb")  # noqa: SIM115 - returned to the caller, who closes it
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in the store")
        if expected_size is not None:
            actual = os.fstat(f.fileno()).st_size
            if actual != expected_size:
                f.close()
                raise CorruptContent(f"blob {digest}: size on disk {actual}, expected {expected_size}")
        return f

    def read(self, digest: Digest) -> bytes:
        """Read a small blob and verify its digest before anyone parses it."""
        with self.open(digest) as f:
            data = f.read()
        digest.verify_bytes(data, f"blob {digest}")
        return data

    def delete(self, digest: Digest) -> None:
        self.path(digest).unlink(missing_ok=True)

    def list(self) -> Iterator[Digest]:
        base = self.root / "blobs"
        if not base.is_dir():
            return
        for algo_dir in base.iterdir():
            for entry in algo_dir.iterdir():
                yield Digest(algo_dir.name, entry.name)

    def _commit(self, digest: Digest, write) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _tempfile().mkstemp(dir=self.tmp, prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            self._place(Path(tmp_name), digest)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _place(self, tmp: Path, digest: Digest) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.rename(tmp, final)
        fsync_dir(final.parent)
