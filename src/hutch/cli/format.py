"""Docker's human formats: "3 minutes ago", "Up 5 seconds", "1.2MB", and column tables."""

from __future__ import annotations

import time

from hutch.engine.resources import decimal_size as size  # noqa: F401 - Docker's image sizes


def duration(seconds: float) -> str:
    """Docker's HumanDuration: 'Less than a second', '5 seconds', 'About a minute', '3 hours', ..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def ago(timestamp: float, now: float | None = None) -> str:
    return f"{duration((now or time.time()) - timestamp)} ago"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by three spaces, as Docker's tabwriter output."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)
