"""``--filter KEY=VALUE`` for containers, as ``docker ps`` reads it: the same key ORs, keys AND."""

from __future__ import annotations

from collections.abc import Callable

from hutch.engine.records import Record
from hutch.errors import InvalidArgument

_KEYS = ("status", "name", "id", "label", "ancestor", "exited")
_STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def parse_filters(items: list[str], keys: tuple[str, ...]) -> dict[str, list[str]]:
    """``KEY=VALUE`` items grouped by key (Docker: the same key ORs, keys AND); an unknown key is a one-line
    error naming it and the keys there are."""
    wanted: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in keys:
            raise InvalidArgument(
                f"invalid filter {item!r}: expected one of {', '.join(k + '=' for k in keys)}"
            )
        wanted.setdefault(key, []).append(value)
    return wanted


def container_filter(items: list[str]) -> Callable[[Record], bool]:
    """A predicate for ``items``; unknown keys and statuses are one-line errors naming them."""
    wanted = parse_filters(items, _KEYS)
    for value in wanted.get("status", []):
        if value not in _STATUSES:
            raise InvalidArgument(f"invalid filter 'status={value}': expected one of {', '.join(_STATUSES)}")

    def matches(record: Record) -> bool:
        options = record.config.get("options", {})
        labels = options.get("labels") or {}
        checks = {
            "status": lambda v: record.state == v,
            "name": lambda v: v in record.name,  # Docker matches a substring (a regexp, in fact)
            "id": lambda v: record.id.startswith(v),
            "label": lambda v: _label_matches(labels, v),
            "ancestor": lambda v: v in (record.image_ref, record.image_id, record.image_id[7:19]),
            "exited": lambda v: record.state == "exited" and str(record.exit_code) == v,
        }
        return all(any(checks[key](v) for v in values) for key, values in wanted.items())

    return matches


def _label_matches(labels: dict, wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)
