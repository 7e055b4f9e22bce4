"""Named points where a test can make hutch die by SIGKILL, to prove that no crash corrupts its state.

``HUTCH_CRASH_AT=start:spawned hutch run ...`` kills the process when it reaches that point, with no chance
to clean up, exactly like ``kill -9``. Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "create:inserted",  # the record exists, nothing has run
    "start:spawned",  # the init runs (foreground: dies with us), the record still says created
    "finish:exited",  # the init has exited, its cgroup and record not yet updated
    "stop:signalled",  # the stop signal was sent, nothing waited for
    "remove:renamed",  # the container directory is in the trash, the record still exists
)


def crash_point(name: str) -> None:
    if os.environ.get("HUTCH_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
