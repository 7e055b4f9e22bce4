"""Compression sniffing and streaming decompression of layer blobs."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from hutch.errors import CorruptContent
from hutch.image.compression import detect, open_decompressed

DATA = os.urandom(200_000) * 3 + b"tail"


class Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int = 1) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = len(self._data)
        n = min(size, self._step)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


def read_all(stream, chunk: int = 1 << 16) -> bytes:
    out = bytearray()
    while data := stream.read(chunk):
        out += data
    return bytes(out)


def zstd_streamed(data: bytes) -> bytes:
    """A zstd frame without a content size (as a streaming compressor writes it), with a checksum."""
    buf = io.BytesIO()
    with zstandard.ZstdCompressor(write_checksum=True).stream_writer(buf, closefd=False) as writer:
        writer.write(data)
    frame = buf.getvalue()
    assert zstandard.frame_content_size(frame) == -1
    return frame


def test_detect() -> None:
    assert detect(b"\x1f\x8b\x08\x00") == "gzip"
    assert detect(b"\x28\xb5\x2f\xfd") == "zstd"
    assert detect(b"ustar") == "none"
    assert detect(b"") == "none"
    assert detect(b"\x1f") == "none"
    assert detect(b"\x28\xb5\x2f") == "none"


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(DATA, id="plain"),
        pytest.param(gzip.compress(DATA), id="gzip"),
        pytest.param(gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:]), id="gzip-multi-member"),
        pytest.param(zstandard.ZstdCompressor().compress(DATA), id="zstd"),
        pytest.param(zstd_streamed(DATA), id="zstd-no-content-size"),
        pytest.param(
            zstandard.ZstdCompressor().compress(DATA[:5000]) + zstd_streamed(DATA[5000:]),
            id="zstd-two-frames",
        ),
    ],
)
def test_round_trip(blob: bytes) -> None:
    assert read_all(open_decompressed(io.BytesIO(blob))) == DATA
    assert open_decompressed(io.BytesIO(blob)).read() == DATA


def test_sniffing_loses_nothing_on_a_trickling_stream() -> None:
    for blob in (DATA[:100], gzip.compress(DATA[:100]), zstd_streamed(DATA[:100])):
        assert read_all(open_decompressed(Trickle(blob, step=1)), chunk=7) == DATA[:100]


def test_empty_and_tiny_plain_streams() -> None:
    assert open_decompressed(io.BytesIO(b"")).read() == b""
    assert read_all(open_decompressed(io.BytesIO(b"ab"))) == b"ab"


def test_closing_the_result_leaves_the_source_open() -> None:
    source = io.BytesIO(gzip.compress(DATA))
    stream = open_decompressed(source)
    stream.read(10)
    stream.close()
    assert not source.closed


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(gzip.compress(DATA)[:-20], id="gzip-truncated"),
        pytest.param(gzip.compress(DATA)[:5], id="gzip-truncated-header"),
        pytest.param(zstandard.ZstdCompressor().compress(DATA)[:-10], id="zstd-truncated"),
        pytest.param(zstd_streamed(DATA)[:6], id="zstd-truncated-header"),
        pytest.param(zstd_streamed(DATA)[:-1], id="zstd-truncated-checksum"),
        pytest.param(zstd_streamed(DATA) + b"\x28\xb5\x2f\xfd", id="zstd-truncated-second-frame"),
    ],
)
def test_truncated_streams_are_corrupt(blob: bytes) -> None:
    with pytest.raises(CorruptContent, match="truncated"):
        read_all(open_decompressed(io.BytesIO(blob)))


def flip(blob: bytes, at: int) -> bytes:
    damaged = bytearray(blob)
    damaged[at] ^= 0xFF
    damaged[at + 1] ^= 0x55
    return bytes(damaged)


def test_corrupt_gzip() -> None:
    blob = gzip.compress(b"hello world " * 10_000)
    with pytest.raises(CorruptContent, match="gzip"):
        read_all(open_decompressed(io.BytesIO(flip(blob, len(blob) // 2))))


def test_gzip_trailing_garbage() -> None:
    with pytest.raises(CorruptContent, match="gzip"):
        read_all(open_decompressed(io.BytesIO(gzip.compress(DATA) + b"garbage!")))


def test_corrupt_zstd() -> None:
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(b"hello world " * 10_000)
    with pytest.raises(CorruptContent, match="zstd"):
        read_all(open_decompressed(io.BytesIO(flip(blob, len(blob) - 3))))


def test_zstd_garbage_after_magic() -> None:
    with pytest.raises(CorruptContent):
        read_all(open_decompressed(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)))


def test_import_is_lean() -> None:
    """The module is on the pull path only; it must not drag in the decoders before they are needed."""
    src = Path(__file__).resolve().parents[2] / "src"
    code = "import sys, hutch.image.compression; print('zstandard' in sys.modules, 'gzip' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
    )
    assert out.stdout.split() == ["False", "False"], out.stderr
