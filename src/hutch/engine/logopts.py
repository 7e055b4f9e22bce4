"""``--log-opt`` for the container log: ``max-size`` and ``max-file``, named as in Docker's json-file."""

from __future__ import annotations

from hutch.errors import InvalidArgument

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str, what: str) -> int:
    """``10m``, ``512k``, ``1g`` or bytes; Docker's units are powers of 1024."""
    number, unit = text.rstrip("bBkKmMgG"), text[len(text.rstrip("bBkKmMgG")) :].lower()
    if unit.endswith("b") and len(unit) == 2:
        unit = unit[0]
    if not number.isdigit() or unit not in _UNITS:
        raise InvalidArgument(f"invalid {what} {text!r}: expected a size such as 10m")
    return int(number) * _UNITS[unit]


def parse_log_opts(items: list[str]) -> dict:
    """``KEY=VALUE`` items -> {"max-size": bytes, "max-file": count}; unknown keys are errors."""
    result: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise InvalidArgument(f"invalid --log-opt {item!r}: expected KEY=VALUE")
        if key == "max-size":
            size = parse_size(value, "--log-opt max-size")
            if size <= 0:
                raise InvalidArgument(f"invalid --log-opt max-size {value!r}: must be positive")
            result[key] = size
        elif key == "max-file":
            if not value.isdigit() or int(value) < 1:
                raise InvalidArgument(
                    f"invalid --log-opt max-file {value!r}: expected a number of at least 1"
                )
            result[key] = int(value)
        else:
            raise InvalidArgument(f"unknown --log-opt {key!r}: hutch supports max-size and max-file")
    if "max-file" in result and "max-size" not in result:
        raise InvalidArgument("--log-opt max-file needs max-size")
    return result
