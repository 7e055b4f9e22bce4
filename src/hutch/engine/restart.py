"""Restart policies (``--restart``) as Docker defines them, decided without a daemon.

The monitor of a detached container hands its exit to the finisher (engine.monitor), which asks this module
whether and when to start the container again. Pure logic, so it is tested without containers.
"""

from __future__ import annotations

from hutch.errors import InvalidArgument

POLICIES = ("no", "on-failure", "always", "unless-stopped")
# Docker's back-off: 100 ms, doubled for every restart in a row, at most a minute; a run of 10 s or more
# counts as healthy and starts the sequence over.
FIRST_DELAY = 0.1
MAX_DELAY = 60.0
HEALTHY_RUN = 10.0


def parse_restart(text: str) -> str:
    """``no``, ``on-failure[:N]``, ``always`` or ``unless-stopped``; normalised (``on-failure:0`` is
    unlimited, written ``on-failure``)."""
    name, _, count = text.partition(":")
    if name not in POLICIES:
        raise InvalidArgument(
            f"invalid --restart {text!r}: expected no, on-failure[:N], always or unless-stopped"
        )
    if count:
        if name != "on-failure":
            raise InvalidArgument(f"invalid --restart {text!r}: only on-failure takes a maximum retry count")
        if not count.isdigit():
            raise InvalidArgument(f"invalid --restart {text!r}: the retry count must be a number")
        if int(count) > 0:
            return f"on-failure:{int(count)}"
    return name


def should_restart(policy: str, exit_code: int, restarts: int, stopped_by_user: bool) -> bool:
    """Whether a container that just exited with ``exit_code`` starts again under ``policy``."""
    if stopped_by_user:
        return False
    name, _, count = policy.partition(":")
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure":
        return exit_code != 0 and (not count or restarts < int(count))
    return False


def delay_before(restarts_in_a_row: int, ran_for: float) -> float:
    """Seconds to wait before restart number ``restarts_in_a_row + 1``."""
    if ran_for >= HEALTHY_RUN:
        return FIRST_DELAY
    return min(FIRST_DELAY * (2**restarts_in_a_row), MAX_DELAY)
