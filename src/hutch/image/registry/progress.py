"""Progress as Docker shows it: one line per layer, live on a terminal with a total bar; plain lines
(status changes only) when the output is a pipe or file; nothing but the result with ``--quiet``.

Download threads report through one lock; a terminal is redrawn at most ten times a second, so the
reporting costs nothing next to the transfer.
"""

from __future__ import annotations

import sys
import threading
import time

_REDRAW = 0.1
_BAR = 30


def human(n: float) -> str:
    """Bytes as Docker prints them (decimal units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n:.3g}GB"


def _bar(done: int, total: int) -> str:
    if total <= 0:
        return ""
    filled = min(_BAR, int(_BAR * done / total))
    arrow = ">" if filled < _BAR else ""
    return "[" + "=" * filled + arrow + " " * (_BAR - filled - len(arrow)) + "]"


class Progress:
    """Reports layer status; ``mode`` is ``tty``, ``plain`` or ``quiet`` (``auto`` picks tty or plain)."""

    def __init__(self, out=None, mode: str = "auto") -> None:
        self.out = out or sys.stdout
        if mode == "auto":
            mode = "tty" if self.out.isatty() else "plain"
        self.mode = mode
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._rows: dict[str, list] = {}  # id -> [status, done, total]
        self._drawn = 0
        self._last = 0.0

    def message(self, text: str) -> None:
        """A line outside the table (``Digest: ...``); shown unless quiet."""
        if self.mode == "quiet":
            return
        with self._lock:
            self._finish_table()
            print(text, file=self.out, flush=True)

    def result(self, text: str) -> None:
        """The one line even ``--quiet`` prints."""
        with self._lock:
            self._finish_table()
            print(text, file=self.out, flush=True)

    def status(self, key: str, status: str, total: int | None = None) -> None:
        """A layer's new status (``Waiting``, ``Downloading``, ``Pull complete``...)."""
        if self.mode == "quiet":
            return
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                row = self._rows[key] = [status, 0, 0]
                self._order.append(key)
            row[0] = status
            if total is not None:
                row[2] = total
            if self.mode == "plain":
                print(f"{key}: {status}", file=self.out, flush=True)
            else:
                self._draw(force=True)

    def advance(self, key: str, n: int) -> None:
        """``n`` more bytes of a layer moved."""
        if self.mode != "tty":
            return
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                row[1] += n
                self._draw()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < _REDRAW:
            return
        self._last = now
        lines = []
        for key in self._order:
            status, done, total = self._rows[key]
            detail = ""
            if status in ("Downloading", "Pushing") and total:
                detail = f" {_bar(done, total)} {human(done)}/{human(total)}"
            lines.append(f"{key}: {status}{detail}")
        done = sum(r[1] for r in self._rows.values())
        total = sum(r[2] for r in self._rows.values())
        if total:
            lines.append(f"total: {_bar(done, total)} {human(done)}/{human(total)}")
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)

    def _finish_table(self) -> None:
        if self.mode == "tty" and self._rows:
            self._draw(force=True)
            self._order.clear()
            self._rows.clear()
            self._drawn = 0
