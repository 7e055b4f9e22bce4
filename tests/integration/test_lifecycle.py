"""create/start/stop/kill/restart/wait/logs, across separate hutch processes as a user would run them."""

import json

import pytest

pytestmark = pytest.mark.root

TRAPPER = 'echo started; trap "echo got term; exit 9" TERM; while true; do sleep 0.1; done'


def _state(hutch, name: str) -> dict:
    return json.loads(hutch.ok("inspect", "--type", "container", name))[0]["State"]


def test_create_then_start_then_stop_records_the_real_exit_code(hutch, busybox):
    try:
        cid = hutch.ok("create", "--name", "svc", busybox, "sh", "-c", TRAPPER).strip()
        assert len(cid) == 64 and _state(hutch, "svc")["Status"] == "created"
        hutch.ok("start", "svc")
        assert _state(hutch, "svc")["Running"]
        hutch.ok("stop", "-t", "5", "svc")
        state = _state(hutch, "svc")
        assert state["Status"] == "exited" and state["ExitCode"] == 9  # the trap ran: SIGTERM, not SIGKILL
        assert "got term" in hutch.ok("logs", "svc")
    finally:
        hutch("rm", "-f", "svc")


def test_stop_escalates_to_kill_after_the_timeout(hutch, busybox):
    try:
        hutch.ok(
            "run",
            "-d",
            "--name",
            "stubborn",
            busybox,
            "sh",
            "-c",
            "trap '' TERM; while true; do sleep 0.1; done",
        )
        hutch.ok("stop", "-t", "0.5", "stubborn")
        assert _state(hutch, "stubborn")["ExitCode"] == 137
    finally:
        hutch("rm", "-f", "stubborn")


def test_kill_wait_restart(hutch, busybox):
    try:
        hutch.ok("run", "-d", "--name", "k", busybox, "sleep", "300")
        hutch.ok("kill", "-s", "KILL", "k")
        assert hutch.ok("wait", "k") == "137\n"
        hutch.ok("restart", "k")
        assert _state(hutch, "k")["Running"]
        result = hutch("kill", "-s", "NOPE", "k")
        assert result.code == 125 and "invalid signal" in result.err
    finally:
        hutch("rm", "-f", "k")


def test_start_attached_returns_the_exit_code_and_output(hutch, busybox):
    try:
        hutch.ok("create", "--name", "once", busybox, "sh", "-c", "echo hello; exit 4")
        result = hutch("start", "-a", "once")
        assert result.code == 4 and result.out == "hello\n"
    finally:
        hutch("rm", "-f", "once")


def test_logs_tail_and_follow(hutch, busybox):
    try:
        hutch.ok(
            "run",
            "-d",
            "--name",
            "talk",
            busybox,
            "sh",
            "-c",
            "for i in 1 2 3; do echo line$i; done; echo oops >&2",
        )
        assert hutch.ok("wait", "talk") == "0\n"
        # As in Docker, --tail counts the last lines of the log, whichever stream wrote them.
        result = hutch("logs", "--tail", "2", "talk")
        assert result.out == "line3\n" and result.err == "oops\n"
        result = hutch("logs", "--tail", "1", "talk")
        assert result.out == "" and result.err == "oops\n"
        assert hutch.ok("logs", "-f", "talk") == "line1\nline2\nline3\n"
    finally:
        hutch("rm", "-f", "talk")


def test_lifecycle_errors_are_one_line(hutch, busybox):
    for argv in (("stop", "ghost"), ("kill", "ghost"), ("start", "ghost"), ("logs", "ghost")):
        result = hutch(*argv)
        assert result.code != 0 and len(result.err.strip().splitlines()) == 1, argv


def test_rename_top_and_prune(hutch, busybox):
    try:
        hutch.ok("run", "-d", "--name", "before", busybox, "sh", "-c", "sleep 300 & sleep 301")
        hutch.ok("rename", "before", "after")
        assert "after" in hutch.ok("ps") and "before" not in hutch.ok("ps")
        top = hutch.ok("top", "after").splitlines()
        assert top[0].split() == ["UID", "PID", "PPID", "TIME", "CMD"]
        assert {line.split(None, 4)[4] for line in top[1:]} == {"sleep 300", "sleep 301"}
        hutch.ok("create", "--name", "idle", busybox, "true")
        assert hutch("rename", "after", "idle").code == 125  # the name is taken
        pruned = hutch.ok("container", "prune", "-f")
        assert "Total reclaimed containers: 1" in pruned
        assert "idle" not in hutch.ok("ps", "-a") and "after" in hutch.ok("ps")
    finally:
        hutch("rm", "-f", "after")
