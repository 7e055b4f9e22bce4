"""Detached containers and their monitor: logs with times and rotation, attach, pause, restart policies,
and survival of every hutch process being killed."""

import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.root


def _inspect(hutch, name: str) -> dict:
    return json.loads(hutch.ok("inspect", "--type", "container", name))[0]


def _until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _read_lines(stream, count: int, timeout: float) -> list[str]:
    """Up to ``count`` lines from a pipe, giving up at the deadline (a missing event must fail, not hang).
    Reads the fd itself: a buffered reader would hold lines that select() no longer reports."""
    import select

    fd, data, deadline = stream.fileno(), b"", time.monotonic() + timeout
    while data.count(b"\n") < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return [line.decode().strip() for line in data.splitlines()[:count]]


def _monitor_pids(hutch) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"hutch-monitor.*{hutch.root}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_logs_since_until_and_timestamps(hutch, busybox):
    try:
        hutch.ok("run", "-d", "--name", "t", busybox, "sh", "-c", "echo early; sleep 1.2; echo late")
        hutch.ok("wait", "t")
        stamped = hutch.ok("logs", "-t", "t").splitlines()
        assert [line.split(" ", 1)[1] for line in stamped] == ["early", "late"]
        assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ", line) for line in stamped)
        middle = stamped[0].split(" ")[0][:19] + ".900000000Z"  # between the two, 1.2 s apart
        late_stamp = stamped[1].split(" ")[0]
        assert hutch.ok("logs", "--since", late_stamp, "t") == "late\n"
        assert hutch.ok("logs", "--until", stamped[0].split(" ")[0], "t") == "early\n"
        assert hutch.ok("logs", "--since", "1h", "t") == "early\nlate\n"
        assert hutch.ok("logs", "--since", "4102444800", "t") == ""  # the year 2100
        assert "late" in hutch.ok("logs", "--since", middle, "t")
        bad = hutch("logs", "--since", "yesterday-ish", "t")
        assert bad.code == 125 and "--since" in bad.err and len(bad.err.splitlines()) == 1
    finally:
        hutch("rm", "-f", "t")


def test_log_rotation_keeps_max_file_files_and_the_newest_lines(hutch, busybox):
    try:
        hutch.ok(
            "run", "-d", "--name", "r", "--log-opt", "max-size=2k", "--log-opt", "max-file=3",
            busybox, "sh", "-c", "i=0; while [ $i -lt 400 ]; do echo line$i; i=$((i+1)); done",
        )  # fmt: skip
        hutch.ok("wait", "r")
        cdir = hutch.root / "containers" / _inspect(hutch, "r")["Id"]
        logs = sorted(p.name for p in cdir.iterdir() if p.name.startswith("container.log"))
        assert logs == ["container.log", "container.log.1", "container.log.2"]
        assert all(p.stat().st_size <= 2048 for p in cdir.glob("container.log*"))
        lines = hutch.ok("logs", "r").splitlines()
        assert lines[-1] == "line399" and len(lines) < 400
        assert lines == [f"line{i}" for i in range(400 - len(lines), 400)]  # contiguous: nothing lost
        assert hutch.ok("logs", "--tail", "2", "r") == "line398\nline399\n"
        bad = hutch("run", "-d", "--log-opt", "max-size=lots", busybox, "true")
        assert bad.code == 125 and "max-size" in bad.err
    finally:
        hutch("rm", "-f", "r")


def test_logs_follow_sees_new_lines_and_ends_with_the_container(hutch, busybox):
    try:
        hutch.ok(
            "run", "-d", "--name", "f", busybox, "sh", "-c", "for i in 1 2 3; do echo n$i; sleep 0.3; done"
        )
        assert hutch.ok("logs", "-f", "f") == "n1\nn2\nn3\n"
    finally:
        hutch("rm", "-f", "f")


def test_attach_relays_stdin_and_output_and_returns_the_exit_code(hutch, busybox):
    try:
        hutch.ok(
            "run", "-d", "-i", "--name", "a", busybox, "sh", "-c", "read x; echo got $x; echo e >&2; exit 4"
        )
        result = hutch("attach", "a", input="hello\n")
        assert result.code == 4
        assert result.out == "got hello\n" and result.err == "e\n"
        assert hutch.ok("logs", "a") == "got hello\n"
        stopped = hutch("attach", "a")
        assert stopped.code == 125 and "stopped container" in stopped.err
    finally:
        hutch("rm", "-f", "a")


def test_pause_freezes_and_unpause_thaws(hutch, busybox):
    try:
        hutch.ok(
            "run", "-d", "--name", "p", busybox, "sh", "-c", "while true; do date +%s%N; sleep 0.05; done"
        )
        _until(lambda: hutch.ok("logs", "p").count("\n") >= 2)
        hutch.ok("pause", "p")
        state = _inspect(hutch, "p")["State"]
        assert state["Status"] == "paused" and state["Paused"] and state["Running"]
        assert "(Paused)" in hutch.ok("ps")
        before = hutch.ok("logs", "p")
        time.sleep(0.5)
        assert hutch.ok("logs", "p") == before
        refused = hutch("exec", "p", "true")
        assert refused.code != 0 and "paused" in refused.err
        again = hutch("pause", "p")
        assert again.code != 0 and "already paused" in again.err
        hutch.ok("unpause", "p")
        _until(lambda: hutch.ok("logs", "p") != before)
        assert _inspect(hutch, "p")["State"]["Status"] == "running"
        hutch.ok("pause", "p")
        hutch.ok("stop", "-t", "1", "p")  # a paused container can still be stopped
        assert _inspect(hutch, "p")["State"]["Status"] == "exited"
    finally:
        hutch("rm", "-f", "p")


def test_on_failure_restarts_n_times_then_stops(hutch, busybox):
    try:
        hutch.ok(
            "run", "-d", "--name", "of", "--restart", "on-failure:2", busybox, "sh", "-c", "echo run; exit 3"
        )
        _until(
            lambda: (
                _inspect(hutch, "of")["State"]["Status"] == "exited"
                and _inspect(hutch, "of")["RestartCount"] == 2
            )
        )
        time.sleep(0.5)  # a third start would come within the back-off (0.4 s)
        info = _inspect(hutch, "of")
        assert info["RestartCount"] == 2 and info["State"]["ExitCode"] == 3
        assert info["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
        assert hutch.ok("logs", "of") == "run\nrun\nrun\n"
        conflict = hutch("run", "--rm", "--restart", "always", busybox, "true")
        assert conflict.code == 125 and "--restart and --rm" in conflict.err
    finally:
        hutch("rm", "-f", "of")


def test_always_restarts_until_stopped(hutch, busybox):
    try:
        hutch.ok("run", "-d", "--name", "al", "--restart", "always", busybox, "sh", "-c", "sleep 0.2")
        _until(lambda: _inspect(hutch, "al")["RestartCount"] >= 2)
        hutch.ok("stop", "-t", "1", "al")
        count = _inspect(hutch, "al")["RestartCount"]
        time.sleep(1.0)
        info = _inspect(hutch, "al")
        assert info["State"]["Status"] == "exited" and info["RestartCount"] == count
        assert not _monitor_pids(hutch)
    finally:
        hutch("rm", "-f", "al")


def test_container_survives_sigkill_of_every_hutch_process(hutch, busybox):
    try:
        hutch.ok("run", "-d", "--name", "s", busybox, "sleep", "300")
        pid = _inspect(hutch, "s")["State"]["Pid"]
        for monitor in _monitor_pids(hutch):
            os.kill(monitor, signal.SIGKILL)
        time.sleep(0.2)
        os.kill(pid, 0)  # still alive
        assert _inspect(hutch, "s")["State"]["Status"] == "running"
        hutch.ok("stop", "-t", "1", "s")
        assert _inspect(hutch, "s")["State"]["Status"] == "exited"
    finally:
        hutch("rm", "-f", "s")


def test_exit_status_survives_a_killed_finisher(hutch, busybox):
    """The monitor writes the status before the finisher runs; whoever looks next records it."""
    try:
        cid = hutch.ok("run", "-d", "--name", "x", busybox, "sh", "-c", "sleep 0.3; exit 7").strip()
        monitor = _monitor_pids(hutch)[0]
        os.kill(monitor, signal.SIGSTOP)  # hold it after the container exits...
        time.sleep(0.8)
        os.kill(monitor, signal.SIGKILL)  # ...and kill it: no exit file either, the worst case
        assert _inspect(hutch, "x")["State"]["ExitCode"] == 137
        hutch.ok("rm", "x")
        cid = hutch.ok("run", "-d", "--name", "y", busybox, "sh", "-c", "exit 7").strip()
        _until(lambda: (hutch.root / "containers" / cid / "exit").exists())
        assert hutch.ok("wait", "y") == "7\n"
    finally:
        hutch("rm", "-f", "x")
        hutch("rm", "-f", "y")


def test_twenty_concurrent_detached_runs(hutch, busybox):
    def run(_):
        return hutch("run", "-d", busybox, "sleep", "60")

    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(run, range(20)))
        assert all(r.code == 0 for r in results), [r.err for r in results if r.code]
        ids = {r.out.strip() for r in results}
        assert len(ids) == 20
        names = hutch.ok("ps", "--format", "json").splitlines()
        assert len({json.loads(line)["Names"] for line in names}) == 20
    finally:
        ids = hutch.ok("ps", "-aq").split()
        if ids:
            hutch("rm", "-f", *ids)


def test_format_templates_and_filters(hutch, busybox):
    try:
        hutch.ok("run", "-d", "--name", "fa", "-l", "tier=web", busybox, "sleep", "60")
        hutch.ok("run", "-d", "--name", "fb", "-l", "tier=db", busybox, "sh", "-c", "exit 3")
        hutch.ok("wait", "fb")
        assert hutch.ok("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "fa", "fb") == (
            "running 0\nexited 3\n"
        )
        assert hutch.ok("inspect", "-f", '{{index .Config.Labels "tier"}}', "fa") == "web\n"
        assert hutch.ok("ps", "--format", "{{.Names}}") == "fa\n"
        assert hutch.ok(
            "ps", "-a", "--filter", "status=exited", "--format", "{{.Names}} {{.Status}}"
        ).startswith("fb Exited (3)")
        assert hutch.ok("ps", "-a", "--filter", "label=tier=db", "-q") == hutch.ok(
            "ps", "-aq", "-f", "name=fb"
        )
        assert hutch.ok("ps", "-a", "--filter", "label=tier", "--format", "{{.Names}}").split() == [
            "fb",
            "fa",
        ]
        table = hutch.ok("ps", "--format", "table {{.Names}}\\t{{.State}}").splitlines()
        assert table[0].split() == ["NAMES", "STATE"] and table[1].split() == ["fa", "running"]
        for argv in (("ps", "--filter", "colour=red"), ("inspect", "-f", "{{.State.Nope}}", "fa")):
            bad = hutch(*argv)
            assert bad.code != 0 and len(bad.err.strip().splitlines()) == 1, bad.err
    finally:
        hutch("rm", "-f", "fa", "fb")


def test_events_past_and_followed(hutch, busybox):
    follower = subprocess.Popen(
        hutch.argv("events", "--format", "{{.Action}} {{.Actor.Attributes.name}}"),
        stdout=subprocess.PIPE, text=True, env=hutch.env,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # it starts at the end of the log: only what happens from now on
        hutch("run", "--rm", "--name", "ev", busybox, "sh", "-c", "exit 2")
        seen = _read_lines(follower.stdout, 4, timeout=20)
        assert seen == ["create ev", "start ev", "die ev", "destroy ev"]
    finally:
        follower.kill()
        follower.wait()
    past = hutch.ok("events", "--since", "1h", "--until", "0s", "--filter", "event=die", "--format", "json")
    event = json.loads(past.splitlines()[-1])
    assert event["Actor"]["Attributes"]["exitCode"] == "2" and event["Type"] == "container"
    bad = hutch("events", "--filter", "colour=red")
    assert bad.code == 125 and "colour" in bad.err


def test_cp_both_ways_running_and_stopped(hutch, busybox, tmp_path):
    setup = "mkdir -p /data/sub; echo hello > /data/a; echo deep > /data/sub/b; ln -s / /data/root; sleep 60"
    try:
        hutch.ok("run", "-d", "--name", "cp", busybox, "sh", "-c", setup)
        _until(lambda: hutch("exec", "cp", "test", "-L", "/data/root").code == 0)
        hutch.ok("cp", "cp:/data", str(tmp_path))
        assert (tmp_path / "data" / "sub" / "b").read_text() == "deep\n"
        assert os.readlink(tmp_path / "data" / "root") == "/"  # copied as a link, not followed
        hutch.ok("cp", "cp:/data/a", str(tmp_path / "renamed"))
        assert (tmp_path / "renamed").read_text() == "hello\n"
        (tmp_path / "up.txt").write_text("from host\n")
        os.chown(tmp_path / "up.txt", 1234, 1234)
        hutch.ok("cp", str(tmp_path / "up.txt"), "cp:/data/root/tmp/")  # through the container's own link
        assert hutch.ok("exec", "cp", "stat", "-c", "%u %n", "/tmp/up.txt") == "0 /tmp/up.txt\n"
        hutch.ok("cp", "-a", str(tmp_path / "up.txt"), "cp:/tmp/kept.txt")
        assert hutch.ok("exec", "cp", "stat", "-c", "%u", "/tmp/kept.txt") == "1234\n"
        hutch.ok("stop", "-t", "0", "cp")
        hutch.ok("cp", "cp:/tmp/up.txt", str(tmp_path / "from-stopped"))
        assert (tmp_path / "from-stopped").read_text() == "from host\n"
        hutch.ok("cp", str(tmp_path / "up.txt"), "cp:/etc/added")
        listing = subprocess.run(hutch.argv("cp", "cp:/etc/added", "-"), capture_output=True, env=hutch.env)
        assert listing.returncode == 0 and b"from host" in listing.stdout
        missing = hutch("cp", "cp:/nope", str(tmp_path))
        assert missing.code != 0 and "/nope" in missing.err and len(missing.err.splitlines()) == 1
        both = hutch("cp", str(tmp_path), str(tmp_path / "x"))
        assert both.code == 125 and "CONTAINER:PATH" in both.err
    finally:
        hutch("rm", "-f", "cp")


def test_foreground_runs_keep_their_log_and_pass_output_through(hutch, busybox):
    try:
        result = hutch("run", "--name", "fg", busybox, "sh", "-c", "echo out; echo err >&2; exit 3")
        assert (result.code, result.out, result.err) == (3, "out\n", "err\n")
        logs = hutch("logs", "fg")
        assert (logs.out, logs.err) == ("out\n", "err\n")
        assert hutch("start", "-a", "fg").code == 3
        assert hutch.ok("logs", "fg") == "out\nout\n"
        piped = subprocess.run(
            f"{' '.join(hutch.argv('run', '--name', 'many', busybox, 'seq', '1', '20000'))} | head -1",
            shell=True, capture_output=True, text=True, env=hutch.env,
        )  # fmt: skip
        assert piped.stdout == "1\n"
        assert hutch.ok("logs", "--tail", "1", "many") == "20000\n"  # logged in full after the reader left
    finally:
        hutch("rm", "-f", "fg", "many")


def test_attach_with_a_terminal_resizes_and_detaches_with_ctrl_p_ctrl_q(hutch, busybox):
    import fcntl
    import pty
    import struct
    import termios

    from ptysession import read_until

    def session(script):
        pid, master = pty.fork()
        if pid == 0:
            argv = hutch.argv("attach", "t")
            os.execve(argv[0], argv, hutch.env)
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
            seen = script(master)
            read_until(master, b"", timeout=5)
            _, status = os.waitpid(pid, 0)
            return seen, os.waitstatus_to_exitcode(status)
        finally:
            os.close(master)

    def first(master):
        time.sleep(0.5)
        os.write(master, b"stty size; echo marker-$((6*7))\r")
        seen = read_until(master, b"marker-42\r\n")
        os.write(master, b"\x10\x11")
        return seen + read_until(master, b"read escape sequence")

    def second(master):
        time.sleep(0.5)
        os.write(master, b"exit 5\r")
        return b""

    try:
        hutch.ok("run", "-dit", "--name", "t", busybox, "sh")
        seen, code = session(first)
        assert b"33 101" in seen and code == 0
        assert _inspect(hutch, "t")["State"]["Status"] == "running"
        _, code = session(second)
        assert code == 5
    finally:
        hutch("rm", "-f", "t")


def test_concurrent_starts_launch_one_init(hutch, busybox):
    try:
        hutch.ok("create", "--name", "once", busybox, "sleep", "60")
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda _: hutch("start", "once"), range(4)))
        assert any(r.code == 0 for r in results)
        assert all(r.code == 0 or "is running" in r.err for r in results), [r.err for r in results]
        assert len(_monitor_pids(hutch)) == 1
        assert hutch.ok("top", "once").count("sleep 60") == 1
    finally:
        hutch("rm", "-f", "once")


def test_wait_and_attach_report_the_code_of_a_removed_container(hutch, busybox):
    cid = hutch.ok("run", "--rm", "-d", busybox, "sh", "-c", "sleep 0.5; exit 4").strip()
    assert hutch.ok("wait", cid) == "4\n"
    cid = hutch.ok("run", "--rm", "-d", "-i", busybox, "sh", "-c", "read x; echo got $x; exit 6").strip()
    result = hutch("attach", cid, input="hi\n")
    assert (result.code, result.out) == (6, "got hi\n")
    assert hutch.ok("ps", "-aq") == ""
