"""``hutch exec`` into a microVM under load: flow control on the shared exec port, and many execs at once.

All execs of a VM share one virtio-serial port, so a process that stops reading its stdin (or a client that
stops taking output) must hold back only its own stream. These run a real TCG guest; each test checks that
nothing is left afterwards (no QEMU, no exec relay, no container).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time

import pytest
from test_vm import VM, _assert_nothing_left

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

TICKER = 'i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.2; done'


@pytest.fixture
def vm_container(hutch, busybox):
    """Starts a detached microVM container named ``c``; removed on every path."""

    def start(*argv: str) -> None:
        hutch.ok("run", "-d", "--name", "c", *VM, busybox, *argv, timeout=120)

    yield start
    hutch("rm", "-f", "c", timeout=60)


def _ticks(hutch, name: str) -> int:
    return hutch.ok("logs", name).count("tick ")


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    """Write ``data`` to the process's stdin from a thread: the writes block once the windows are full."""

    def write() -> None:
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass

    threading.Thread(target=write, daemon=True).start()


def test_a_process_that_does_not_read_its_stdin_holds_back_nothing_else(hutch, vm_container):
    vm_container("sh", "-c", TICKER)
    stalled = subprocess.Popen(
        hutch.argv("exec", "-i", "c", "sleep", "1000"),
        env=hutch.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _feed(stalled, os.urandom(8 << 20))  # far beyond the agent's 128 KiB window and every pipe
        time.sleep(3)  # time to fill every buffer on the way
        assert stalled.poll() is None
        before = _ticks(hutch, "c")
        start = time.monotonic()
        echoed = hutch("exec", "c", "echo", "ok", timeout=60)
        assert (echoed.code, echoed.out) == (0, "ok\n"), echoed
        assert time.monotonic() - start < 10
        time.sleep(1)
        assert _ticks(hutch, "c") > before  # the container's own output keeps flowing

        data = os.urandom(4 << 20)
        summed = subprocess.run(
            hutch.argv("exec", "-i", "c", "md5sum"), env=hutch.env, input=data, capture_output=True,
            timeout=120,
        )  # fmt: skip
        assert summed.returncode == 0, summed.stderr
        assert summed.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()
        # both ways at once: 4 MiB in, the same 4 MiB back out, through both windows
        echoed_back = subprocess.run(
            hutch.argv("exec", "-i", "c", "cat"), env=hutch.env, input=data, capture_output=True, timeout=120
        )
        assert echoed_back.returncode == 0 and echoed_back.stdout == data, len(echoed_back.stdout)
    finally:
        stalled.kill()  # its relay dies with it: the supervisor kills `sleep` in the guest
        stalled.wait()
    deadline = time.monotonic() + 30
    while "sleep 1000" in hutch.ok("exec", "c", "ps") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "sleep 1000" not in hutch.ok("exec", "c", "ps")
    hutch.ok("rm", "-f", "c", timeout=60)
    _assert_nothing_left(hutch)


def test_forty_execs_at_once(hutch, vm_container):
    vm_container("sleep", "1000")
    procs = [
        subprocess.Popen(
            hutch.argv("exec", "c", "sh", "-c", f"sleep 2; echo {n}"),
            env=hutch.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(40)
    ]
    try:
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * 40, [r[1] for r in results]
    assert [r[0] for r in results] == [f"{n}\n".encode() for n in range(40)]
    hutch.ok("rm", "-f", "c", timeout=60)
    _assert_nothing_left(hutch)


def test_cp_goes_through_the_guest_both_ways_and_never_touches_the_host(hutch, vm_container, tmp_path):
    # The record's pid is the VM's supervisor, a host process: a copy must not land in (or read from) the
    # host's filesystem through it. It travels as tar through the guest agent instead.
    marker = f"hutch-cp-{os.getpid()}"
    vm_container(
        "sh",
        "-c",
        "mkdir -p /data/sub; echo a > /data/a; echo b > /data/sub/b; ln -s /data /link; sleep 1000",
    )
    (tmp_path / "up.txt").write_text("up\n")
    os.chown(tmp_path / "up.txt", 1234, 1234)
    hutch.ok("cp", str(tmp_path / "up.txt"), f"c:/tmp/{marker}")
    assert not os.path.exists(f"/tmp/{marker}")  # not on the host
    assert hutch.ok("exec", "c", "stat", "-c", "%u %s", f"/tmp/{marker}") == "0 3\n"  # the container's root
    hutch.ok("cp", "-a", str(tmp_path / "up.txt"), "c:/tmp/")
    assert hutch.ok("exec", "c", "stat", "-c", "%u", "/tmp/up.txt") == "1234\n"  # -a keeps the owner

    out = tmp_path / "out"
    out.mkdir()
    hutch.ok("cp", "c:/data", str(out))
    assert (out / "data" / "a").read_text() == "a\n" and (out / "data" / "sub" / "b").read_text() == "b\n"
    hutch.ok("cp", "c:/data/a", str(out / "renamed"))
    assert (out / "renamed").read_text() == "a\n"
    hutch.ok("cp", "-L", "c:/link", str(out / "followed"))
    assert (out / "followed" / "sub" / "b").read_text() == "b\n"
    hutch.ok("cp", "-L", "c:/link", str(out))  # into a directory: named by the link, not its target
    assert (out / "link" / "a").read_text() == "a\n"

    missing = hutch("cp", "c:/nope", str(out))
    assert (
        missing.code != 0 and missing.err.strip() == "hutch: could not find the file /nope in the container"
    )
    nodir = hutch("cp", str(tmp_path / "up.txt"), "c:/nodir/x/")
    assert nodir.code != 0 and "does not exist" in nodir.err and len(nodir.err.strip().splitlines()) == 1

    hutch.ok("stop", "-t", "0", "c", timeout=60)
    refused = hutch("cp", str(tmp_path / "up.txt"), "c:/tmp/")
    assert refused.code != 0 and "writable layer lives in the guest's memory" in refused.err
    hutch.ok("cp", "c:/bin/busybox", str(out / "busybox"))  # a stopped one's files: its image's
    assert (out / "busybox").stat().st_size > 100_000
    hutch.ok("rm", "-f", "c", timeout=60)
    _assert_nothing_left(hutch)


def test_top_lists_the_guests_processes_and_no_container_joins_its_network(hutch, vm_container, busybox):
    # The record's pid is the VM's supervisor, a host process: top must list the guest's processes, not
    # the host's, and a container joining the microVM's network would get the host's namespace instead.
    vm_container("sh", "-c", "sleep 500 & sleep 600")
    expected = ["sleep 500", "sleep 600"]
    for _ in range(100):  # the shell forks and execs after run -d returns
        rows = [line.split(None, 4) for line in hutch.ok("top", "c").splitlines()[1:]]
        if sorted(r[4] for r in rows) == expected:
            break
        time.sleep(0.2)
    assert sorted(r[4] for r in rows) == expected, rows
    by_cmd = {r[4]: r for r in rows}
    assert by_cmd["sleep 600"][:3] == ["0", "1", "0"]  # uid, pid and ppid as the container sees them
    assert by_cmd["sleep 500"][2] == "1"
    result = hutch("run", "--rm", "--network", "container:c", busybox, "true")
    assert result.code == 125 and "microVM" in result.err and len(result.err.strip().splitlines()) == 1
    hutch.ok("rm", "-f", "c", timeout=60)
    _assert_nothing_left(hutch)
