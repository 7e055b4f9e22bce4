"""``--log-opt`` for the container log: ``max-size`` and ``max-file``, named as in Docker's json-file."""

from __future__ import annotations

from hutch.errors import InvalidArgument


def parse_log_opts(items: list[str]) -> dict:
    """``KEY=VALUE`` items -> {"max-size": bytes, "max-file": count}; unknown keys are errors."""
    result: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise InvalidArgument(f"invalid --log-opt {item!r}: expected KEY=VALUE")
        if key == "max-size":
            from hutch.engine.resources import parse_bytes  # only when asked: off the plain run path

            size = parse_bytes("log-opt max-size", value)
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
