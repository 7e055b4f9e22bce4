"""Layer blob compression: sniff gzip / zstd / plain and stream the uncompressed bytes.

Registries label layers with a media type, but the bytes are what count (Docker itself sniffs), so the format
is detected from the magic number. Everything streams with bounded memory: a layer of any size is read in
chunks and never held whole.

Every decoding failure (corrupt data, a stream cut short) becomes ``CorruptContent``, so callers never see
``zlib.error``, ``EOFError`` or a ``zstandard.ZstdError``. A truncated zstd stream needs extra care: the
``zstandard`` stream reader reports a clean end of data when its input stops mid-frame, so ``_ZstdFrames``
follows the frame structure over the compressed bytes to tell a clean end from a cut one.

``gzip`` and ``zstandard`` are imported only when a blob needs them: this module sits on the ``pull`` and
``import`` paths, and ``run`` must not pay for them.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from hutch.errors import CorruptContent

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_HEAD = 4

_ZSTD_FRAME = 0xFD2FB528
_SKIPPABLE_FIRST = 0x184D2A50
_SKIPPABLE_LAST = 0x184D2A5F


def detect(head: bytes) -> str:
    """Name the compression of a blob from its first bytes: ``gzip``, ``zstd`` or ``none``."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def open_decompressed(stream: BinaryIO) -> BinaryIO:
    """A readable stream of the uncompressed bytes of ``stream``, whatever its compression.

    The first bytes are read to sniff the format and replayed, so nothing is lost. Closing the result does
    not close ``stream``: the caller keeps owning it (and may, say, drain it afterwards to finish a digest).
    """
    head = _read_head(stream)
    source = _Prefixed(head, stream)
    kind = detect(head)
    if kind == "gzip":
        return _Guarded(_open_gzip(source), "gzip")
    if kind == "zstd":
        return _Guarded(_ZstdReader(source), "zstd")
    return source


def _read_head(stream: BinaryIO) -> bytes:
    """Up to the first 4 bytes; loops because a pipe or socket may return fewer than asked."""
    head = b""
    while len(head) < _HEAD:
        chunk = stream.read(_HEAD - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _open_gzip(source: BinaryIO) -> BinaryIO:
    """gzip via the stdlib reader, which handles concatenated members and checks each CRC and size."""
    import gzip

    return gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[return-value]


class _Reader(io.RawIOBase):
    """Base for the wrappers here: a read-only, forward-only byte stream built on ``read``."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def readall(self) -> bytes:
        return self.read(-1)


class _Prefixed(_Reader):
    """Replays the sniffed head, then reads straight from the underlying stream."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._stream = stream

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        if not self._head:
            return self._stream.read(size)
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._stream.read(size - len(data))
        return data


class _Guarded(_Reader):
    """Turns a decoder's own exceptions into ``CorruptContent`` naming the format."""

    def __init__(self, inner: BinaryIO, kind: str) -> None:
        super().__init__()
        self._inner = inner
        self._kind = kind
        self._errors = _decoder_errors(kind)

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._inner.read(-1 if size is None else size)
        except CorruptContent:
            raise
        except self._errors as e:
            raise CorruptContent(f"{self._kind} layer data is corrupt or truncated: {e}") from e

    def close(self) -> None:
        self._inner.close()
        super().close()


def _decoder_errors(kind: str) -> tuple[type[BaseException], ...]:
    """The exception types a decoder raises on bad input (BadGzipFile is an OSError, hence listed)."""
    if kind == "gzip":
        import gzip
        import zlib

        return (zlib.error, EOFError, gzip.BadGzipFile)
    import zstandard

    return (zstandard.ZstdError, EOFError)


class _ZstdReader(_Reader):
    """zstd with ``stream_reader`` (bounded output, frames with or without a content size, many frames),
    plus a structural check that the input did not stop in the middle of a frame."""

    def __init__(self, source: BinaryIO) -> None:
        super().__init__()
        import zstandard

        self._frames = _ZstdFrames()
        tap = _Tap(source, self._frames)
        self._reader = zstandard.ZstdDecompressor().stream_reader(tap, read_across_frames=True, closefd=False)

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        data = self._reader.read(size)
        if (size < 0 or not data) and size != 0:
            self._frames.check_complete()
        return data

    def close(self) -> None:
        self._reader.close()
        super().close()


class _Tap(_Reader):
    """Passes compressed bytes through to the decoder while ``_ZstdFrames`` watches them."""

    def __init__(self, source: BinaryIO, frames: _ZstdFrames) -> None:
        super().__init__()
        self._source = source
        self._frames = frames

    def read(self, size: int | None = -1) -> bytes:
        data = self._source.read(-1 if size is None else size)
        self._frames.feed(data)
        return data


class _ZstdFrames:
    """Follows the zstd frame format (RFC 8878 section 3.1) far enough to know where each frame ends.

    Only headers are parsed: block bodies are skipped by length, so the cost is one step per block
    (at most 128 KiB each). At the end of input the stream must sit exactly between frames.
    """

    def __init__(self) -> None:
        self._state = "magic"
        self._want = 4  # header bytes the current state needs
        self._hdr = bytearray()
        self._skip = 0  # body bytes to pass over before the next header
        self._checksum = False
        self._frames = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                continue
            taken = min(self._want - len(self._hdr), end - pos)
            self._hdr += view[pos : pos + taken]
            pos += taken
            if len(self._hdr) == self._want:
                header = int.from_bytes(self._hdr, "little")
                self._hdr.clear()
                self._step(header)

    def check_complete(self) -> None:
        """Raise unless the input so far is a whole number of frames (at least one)."""
        if self._state != "magic" or self._hdr or self._skip or not self._frames:
            raise CorruptContent("zstd layer data is truncated: the stream ends inside a frame")

    def _step(self, header: int) -> None:
        if self._state == "magic":
            self._on_magic(header)
        elif self._state == "descriptor":
            self._on_descriptor(header)
        elif self._state == "block":
            self._on_block(header)
        else:  # "skippable": the 4-byte length of a skippable frame
            self._skip = header
            self._frame_done()

    def _on_magic(self, magic: int) -> None:
        if magic == _ZSTD_FRAME:
            self._state, self._want = "descriptor", 1
        elif _SKIPPABLE_FIRST <= magic <= _SKIPPABLE_LAST:
            self._state, self._want = "skippable", 4
        else:
            raise CorruptContent(f"zstd layer data is corrupt: unknown frame magic {magic:#010x}")

    def _on_descriptor(self, fhd: int) -> None:
        """Frame_Header_Descriptor: the sizes of the optional header fields that follow it."""
        single_segment = (fhd >> 5) & 1
        fcs_size = (single_segment, 2, 4, 8)[fhd >> 6]
        dict_id_size = (0, 1, 2, 4)[fhd & 3]
        self._skip = (0 if single_segment else 1) + dict_id_size + fcs_size
        self._checksum = bool(fhd & 4)
        self._state, self._want = "block", 3

    def _on_block(self, header: int) -> None:
        """Block_Header: last-block flag, type (raw, RLE, compressed, reserved) and size."""
        block_type, size = (header >> 1) & 3, header >> 3
        if block_type == 3:
            raise CorruptContent("zstd layer data is corrupt: reserved block type")
        self._skip = 1 if block_type == 1 else size
        if header & 1:
            self._skip += 4 if self._checksum else 0
            self._frame_done()

    def _frame_done(self) -> None:
        self._frames += 1
        self._state, self._want = "magic", 4
