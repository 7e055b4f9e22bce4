"""Short names for the microVM's cached artefacts, derived from what went into them.

The inputs are local facts (paths, sizes, mtimes, hutch's own build strings), never content an attacker
picks, so a name needs to be distinct, not collision-resistant: CRC-32 and Adler-32 together give 64
bits, with no hashlib (importing it loads OpenSSL: ~7 ms of every microVM start).
"""

from __future__ import annotations

import zlib


def short_key(data: str | bytes, width: int = 16) -> str:
    """``width`` hex digits (at most 16) naming ``data``."""
    raw = data.encode() if isinstance(data, str) else data
    return f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}"[:width]
