"""kill -9 of hutch at named points inside run, stop and rm (HUTCH_CRASH_AT): state stays consistent and
cleaning up leaves nothing behind (the hutch_root fixture fails the test on any leaked mount, cgroup or
process)."""

import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.root


def _crashing(hutch, point: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(hutch.env, HUTCH_CRASH_AT=point)
    return subprocess.run(hutch.argv(*args), env=env, capture_output=True, text=True, timeout=60)


def _states(hutch) -> dict[str, str]:
    lines = hutch.ok("ps", "-a", "--format", "json").splitlines()
    return {json.loads(line)["Names"]: json.loads(line)["State"] for line in lines}


def _clean(hutch) -> None:
    ids = hutch.ok("ps", "-aq").split()
    if ids:
        hutch.ok("rm", "-f", *ids)
    hutch.ok("container", "prune", "-f")
    assert hutch.ok("ps", "-aq") == ""
    assert os.listdir(hutch.root / "containers") == []


@pytest.mark.parametrize(
    ("point", "argv", "state"),
    [
        ("create:inserted", ("run", "--name", "c", "{image}", "sleep", "30"), "created"),
        ("start:spawned", ("run", "--name", "c", "{image}", "sleep", "30"), "created"),
        ("start:spawned", ("run", "-d", "--name", "c", "{image}", "sleep", "30"), "created"),
        ("finish:exited", ("run", "--name", "c", "{image}", "true"), "exited"),
    ],
)
def test_crash_inside_run(hutch, busybox, point, argv, state):
    result = _crashing(hutch, point, *(busybox if a == "{image}" else a for a in argv))
    assert result.returncode != 0
    assert _states(hutch) == {"c": state}
    _clean(hutch)


def test_crash_inside_stop_and_rm(hutch, busybox):
    hutch.ok("run", "-d", "--name", "s", busybox, "sleep", "30")
    assert _crashing(hutch, "stop:signalled", "stop", "s").returncode == -9
    assert _states(hutch) == {"s": "running"}  # pid 1 ignores SIGTERM; the escalation never came
    hutch.ok("stop", "-t", "0", "s")
    assert _states(hutch) == {"s": "exited"}
    assert _crashing(hutch, "remove:renamed", "rm", "s").returncode == -9
    assert list(_states(hutch)) == ["s"]  # the record outlives its files until rm finishes the job
    hutch.ok("rm", "s")
    _clean(hutch)
