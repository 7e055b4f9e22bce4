"""Content digests as the OCI image spec defines them (``algorithm:hex``)."""

from __future__ import annotations

import re

from hutch.errors import CorruptContent, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    import hashlib
    from typing import BinaryIO

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


def _hashlib():
    # hashlib loads OpenSSL (~5 ms); `hutch run` resolves images by stored digests and never hashes.
    import hashlib

    return hashlib


class Digest:
    """A validated digest; only algorithms we can verify are accepted, so nothing unverifiable is stored.

    Immutable, hashable and ordered by (algorithm, hex); a plain class because dataclasses cost start-up time.
    """

    __slots__ = ("algorithm", "hex")

    def __init__(self, algorithm: str, hex: str) -> None:
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "hex", hex)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Digest is immutable")

    def _key(self) -> tuple[str, str]:
        return (self.algorithm, self.hex)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and self._key() == other._key()

    def __lt__(self, other: Digest) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Digest({self.algorithm!r}, {self.hex!r})"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<64 hex>``; anything else is an InvalidArgument naming the text."""
        match = _DIGEST_RE.match(text)
        if not match:
            raise InvalidArgument(f"invalid digest {text!r}: expected algorithm:hex")
        algorithm, hexpart = match.groups()
        expected = _HEX_LENGTH.get(algorithm)
        if expected is None:
            raise InvalidArgument(f"invalid digest {text!r}: unsupported algorithm {algorithm!r}")
        if len(hexpart) != expected or not re.fullmatch(r"[0-9a-f]+", hexpart):
            raise InvalidArgument(f"invalid digest {text!r}: expected {expected} lowercase hex digits")
        return cls(algorithm, hexpart)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """Digest of an in-memory blob."""
        return cls(algorithm, _hashlib().new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return _hashlib().new(self.algorithm)

    def verify_bytes(self, data: bytes, what: str = "content") -> None:
        """Raise CorruptContent unless ``data`` hashes to this digest."""
        actual = _hashlib().new(self.algorithm, data).hexdigest()
        if actual != self.hex:
            raise CorruptContent(f"{what}: digest mismatch: expected {self}, got {self.algorithm}:{actual}")

    @property
    def short(self) -> str:
        """The 12-hex-digit form Docker prints as an ID."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class HashingReader:
    """Wraps a binary stream, hashing and counting what is read through it.

    Used so that a layer is digested in the same pass that decompresses and unpacks it.
    """

    def __init__(self, stream: BinaryIO, algorithm: str = "sha256") -> None:
        self._stream = stream
        self._hash = _hashlib().new(algorithm)
        self.algorithm = algorithm
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read to the end so the digest covers the whole stream (tar readers stop at the end marker)."""
        while self.read(chunk):
            pass

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())


def chain_ids(diff_ids: list[Digest]) -> list[Digest]:
    """ChainID of each layer prefix, as the OCI image spec defines it.

    ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln)). Unpacked layer
    directories are keyed by it, so two images sharing a base share its directories.
    """
    result: list[Digest] = []
    for diff_id in diff_ids:
        if not result:
            result.append(diff_id)
        else:
            result.append(Digest.of_bytes(f"{result[-1]} {diff_id}".encode()))
    return result
