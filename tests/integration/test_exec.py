"""``hutch exec`` end to end: a process joins a running busybox container and shares what it is made of."""

import time

import pytest

from ptysession import shell_session

pytestmark = pytest.mark.root


@pytest.fixture
def svc(hutch, busybox):
    """A detached container named ``svc``, removed (with everything exec'd into it) after the test."""
    hutch.ok("run", "-d", "--name", "svc", busybox, "sleep", "300")
    try:
        yield "svc"
    finally:
        hutch("rm", "-f", "svc")


def test_output_and_exit_codes(hutch, svc):
    assert hutch.ok("exec", svc, "echo", "hello") == "hello\n"
    assert hutch("exec", svc, "sh", "-c", "exit 3").code == 3
    result = hutch("exec", svc, "no-such-command")
    assert result.code == 127
    assert "no-such-command" in result.err and len(result.err.strip().splitlines()) == 1
    assert hutch("exec", svc, "/etc/passwd").code == 126


def test_joins_the_containers_namespaces(hutch, svc):
    out = hutch.ok("exec", svc, "sh", "-c", "echo $$; ps -o comm; hostname; cat /etc/hostname")
    pid, *rest = out.splitlines()
    assert pid != "1" and int(pid) < 100  # a pid of the container's namespace, not the host's
    assert "sleep" in rest  # the container's init is visible
    hostname, etc_hostname = rest[-2:]
    assert hostname == etc_hostname
    cgroups = hutch.ok("exec", svc, "sh", "-c", "cat /proc/self/cgroup; echo --; cat /proc/1/cgroup")
    own, init = cgroups.split("--\n")
    assert own == init and "hutch" in own  # in the container's cgroup, so rm -f ends it too
    run_net = hutch.ok("exec", svc, "cat", "/proc/net/dev")  # the default bridge network's interfaces
    assert sorted(line.split(":")[0].strip() for line in run_net.splitlines()[2:]) == ["eth0", "lo"]


def test_same_capabilities_and_seccomp_as_the_container(hutch, svc):
    status = dict(
        line.split(":\t", 1) for line in hutch.ok("exec", svc, "cat", "/proc/self/status").splitlines()
    )
    assert status["CapEff"].strip() == "00000000a80425fb"
    assert status["CapBnd"].strip() == "00000000a80425fb"
    assert status["Seccomp"].strip() == "2"
    user_caps = hutch.ok("exec", "-u", "1000", svc, "grep", "CapEff", "/proc/self/status")
    assert user_caps.split()[1] == "0000000000000000"


def test_no_new_privileges_and_ulimits_follow_the_container(hutch, busybox):
    hutch.ok(
        "run",
        "-d",
        "--name",
        "strict",
        "--security-opt",
        "no-new-privileges",
        "--ulimit",
        "nofile=512:1024",
        busybox,
        "sleep",
        "300",
    )
    try:
        status = hutch.ok("exec", "strict", "grep", "-E", "NoNewPrivs|Seccomp:", "/proc/self/status").split()
        assert status == ["NoNewPrivs:", "1", "Seccomp:", "2"]
        assert hutch.ok("exec", "strict", "sh", "-c", "ulimit -n; ulimit -Hn") == "512\n1024\n"
    finally:
        hutch("rm", "-f", "strict")


def test_user_env_and_workdir(hutch, svc):
    assert hutch.ok("exec", "-u", "1000", svc, "id", "-u") == "1000\n"
    assert hutch.ok("exec", "-u", "hutch", svc, "sh", "-c", "id -un; echo $HOME") == "hutch\n/home/hutch\n"
    out = hutch.ok(
        "exec", "-e", "A=b c", "-e", "PATH=/bin", "-w", "/etc", svc, "sh", "-c", 'echo "$A|$PATH|$(pwd)"'
    )
    assert out == "b c|/bin|/etc\n"
    assert "HOSTNAME=" in hutch.ok("exec", svc, "env")  # the container's env comes along
    result = hutch("exec", "-w", "/no/such/dir", svc, "true")
    assert result.code == 125 and len(result.err.strip().splitlines()) == 1


def test_writes_are_seen_by_the_next_exec(hutch, svc):
    hutch.ok("exec", svc, "sh", "-c", "echo persisted > /tmp/f")
    assert hutch.ok("exec", svc, "cat", "/tmp/f") == "persisted\n"


def test_stdin_with_interactive(hutch, svc):
    assert hutch("exec", "-i", svc, "cat", input="piped in\n").out == "piped in\n"
    assert hutch("exec", svc, "cat", input="ignored\n").out == ""


def test_no_extra_file_descriptors(hutch, svc):
    assert sorted(hutch.ok("exec", svc, "ls", "/proc/self/fd").split()) == ["0", "1", "2", "3"]


def test_detached_exec_runs_in_the_background(hutch, svc):
    assert hutch.ok("exec", "-d", svc, "sh", "-c", "sleep 0.2; echo done > /tmp/bg") == ""
    deadline = time.monotonic() + 10
    while hutch("exec", svc, "test", "-e", "/tmp/bg").code != 0:
        assert time.monotonic() < deadline, "the detached exec never ran"
        time.sleep(0.1)
    assert hutch.ok("exec", svc, "cat", "/tmp/bg") == "done\n"


def test_stopped_or_missing_container_is_one_line_and_125(hutch, busybox):
    hutch.ok("run", "--name", "done", busybox, "true")
    try:
        result = hutch("exec", "done", "true")
        assert result.code == 125
        assert result.err.strip().splitlines() == ["hutch: container done is not running"]
    finally:
        hutch("rm", "-f", "done")
    result = hutch("exec", "nothere", "true")
    assert result.code == 125 and len(result.err.strip().splitlines()) == 1


def test_tty_through_a_pty(hutch, svc):
    """-it gives the process a terminal from the container's devpts; Ctrl-C reaches it as a signal."""
    answers, after, code = shell_session(hutch.argv("exec", "-it", svc, "sh"), hutch.env)
    assert b"/dev/pts/0" in answers
    assert b"33 101" in answers
    assert b"xterm" in answers
    assert b"after-2" in after
    assert code == 5
