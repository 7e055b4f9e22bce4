"""``hutch run`` end to end, as root, on the real kernel, with a busybox image built offline."""

import json
import os
import re
import subprocess
import time

import pytest

from ptysession import shell_session

pytestmark = pytest.mark.root


def test_echo_and_exit_code(hutch, busybox):
    assert hutch.ok("run", "--rm", busybox, "echo", "hello") == "hello\n"
    assert hutch("run", "--rm", busybox, "sh", "-c", "exit 7").code == 7


def test_signal_death_is_128_plus_signal(hutch, busybox):
    """The init killed from the host (pid 1 ignores its own SIGKILL, as under Docker)."""
    proc = subprocess.Popen(
        hutch.argv("run", "--rm", "--name", "victim", busybox, "sleep", "100"), env=hutch.env
    )
    pid = _wait_running(hutch, "victim")
    os.kill(pid, 9)
    assert proc.wait(timeout=20) == 137


def _wait_running(hutch, name: str) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        result = hutch("inspect", "--type", "container", name)
        if result.code == 0:
            state = json.loads(result.out)[0]["State"]
            if state["Running"]:
                return state["Pid"]
        time.sleep(0.05)
    raise AssertionError(f"{name} never ran")


def test_pid_1_is_the_command_and_host_processes_are_invisible(hutch, busybox):
    out = hutch.ok("run", "--rm", busybox, "sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'")
    pid, count = out.split()
    assert pid == "1"
    assert int(count) <= 3  # sh, ls and grep at most


def test_env_workdir_hostname(hutch, busybox, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("FROM_FILE=1\n")
    out = hutch.ok(
        "run",
        "--rm",
        "-e",
        "A=b c",
        "--env-file",
        str(env_file),
        "-w",
        "/tmp/new",
        "--hostname",
        "box",
        busybox,
        "sh",
        "-c",
        'echo "$A|$FROM_FILE|$(pwd)|$(hostname)|$HOME"',
    )
    assert out == "b c|1|/tmp/new|box|/root\n"


def test_user_switching_by_name_and_number(hutch, busybox):
    assert (
        hutch.ok("run", "--rm", "-u", "hutch", busybox, "id")
        == "uid=1000(hutch) gid=1000(hutch) groups=10(wheel),29(audio)\n"
    )
    assert hutch.ok("run", "--rm", "-u", "1000:10", busybox, "id", "-g") == "10\n"
    status = hutch.ok("run", "--rm", "-u", "hutch", busybox, "grep", "CapEff", "/proc/self/status")
    assert status.split()[1] == "0000000000000000"
    root_caps = hutch.ok("run", "--rm", busybox, "grep", "CapEff", "/proc/self/status")
    assert root_caps.split()[1] == "00000000a80425fb"


def test_unknown_user_is_a_clear_error(hutch, busybox):
    result = hutch("run", "--rm", "-u", "ghost", busybox, "true")
    assert result.code == 125
    assert "unable to find user ghost" in result.err


def test_bind_mounts_rw_and_ro(hutch, busybox, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    out = hutch.ok(
        "run", "--rm", "-v", f"{data}:/data", busybox, "sh", "-c", "cat /data/in.txt; echo x > /data/out"
    )
    assert out == "from host\n"
    assert (data / "out").read_text() == "x\n"
    result = hutch("run", "--rm", "-v", f"{data}:/data:ro", busybox, "sh", "-c", "echo y > /data/out2")
    assert result.code != 0
    assert not (data / "out2").exists()


def test_read_only_root_and_tmpfs(hutch, busybox):
    result = hutch("run", "--rm", "--read-only", busybox, "touch", "/file")
    assert result.code == 1
    assert "Read-only file system" in result.err
    assert (
        hutch.ok(
            "run",
            "--rm",
            "--read-only",
            "--tmpfs",
            "/scratch",
            busybox,
            "sh",
            "-c",
            "touch /scratch/f && echo ok",
        )
        == "ok\n"
    )


def test_writes_stay_in_the_container(hutch, busybox):
    hutch.ok("run", "--rm", busybox, "sh", "-c", "echo changed > /etc/motd; rm /bin/ls")
    assert (
        hutch.ok("run", "--rm", busybox, "sh", "-c", "test -e /bin/ls && test ! -e /etc/motd && echo clean")
        == "clean\n"
    )


def test_network_none_has_only_loopback(hutch, busybox):
    out = hutch.ok("run", "--rm", "--network", "none", busybox, "cat", "/proc/net/dev")
    interfaces = [line.split(":")[0].strip() for line in out.splitlines()[2:]]
    assert interfaces == ["lo"]
    assert (
        hutch.ok("run", "--rm", busybox, "ping", "-c1", "-W2", "127.0.0.1").count("1 packets received") == 1
    )


def test_host_network_sees_host_interfaces(hutch, busybox):
    out = hutch.ok("run", "--rm", "--network", "host", busybox, "cat", "/proc/net/dev")
    assert len(out.splitlines()) >= 3


def test_standard_devices_and_masked_paths(hutch, busybox):
    out = hutch.ok(
        "run",
        "--rm",
        busybox,
        "sh",
        "-c",
        "ls /dev | tr '\\n' ' '; echo; cat /proc/timer_list | wc -c; ls /sys/firmware | wc -l;"
        " echo x > /proc/sys/kernel/hostname 2>/dev/null && echo writable || echo readonly",
    )
    devices, timer_list, firmware, sysctl = out.splitlines()
    assert set(devices.split()) >= {
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "tty",
        "pts",
        "shm",
        "mqueue",
    }
    assert "sda" not in devices and "kvm" not in devices
    assert timer_list.strip() == "0"  # masked by /dev/null
    assert firmware.strip() == "0"  # masked by an empty tmpfs
    assert sysctl == "readonly"


def test_missing_command_exits_127_and_non_executable_126(hutch, busybox):
    result = hutch("run", "--rm", busybox, "no-such-command")
    assert result.code == 127
    assert "no-such-command" in result.err and len(result.err.strip().splitlines()) == 1
    assert hutch("run", "--rm", busybox, "/etc/passwd").code == 126


def test_missing_image_and_bad_reference(hutch, busybox):
    result = hutch("run", "--rm", "nosuchimage", "true")
    assert result.code == 125
    assert len(result.err.strip().splitlines()) == 1
    result = hutch("run", "--rm", "Bad//Ref", "true")
    assert result.code == 125
    assert len(result.err.strip().splitlines()) == 1


def test_no_extra_file_descriptors_reach_the_container(hutch, busybox):
    out = hutch.ok("run", "--rm", busybox, "ls", "/proc/self/fd")
    assert sorted(out.split()) == ["0", "1", "2", "3"]  # 3 is ls's own directory handle


def test_stdin_with_interactive(hutch, busybox):
    result = hutch("run", "--rm", "-i", busybox, "cat", input="piped in\n")
    assert result.out == "piped in\n"


def test_ps_rm_inspect_lifecycle(hutch, busybox):
    assert hutch("run", "--name", "keep", busybox, "sh", "-c", "exit 3").code == 3
    listing = hutch.ok("ps", "-a")
    assert "keep" in listing and "Exited (3)" in listing
    assert "keep" not in hutch.ok("ps")
    info = json.loads(hutch.ok("inspect", "keep"))[0]
    assert info["Name"] == "/keep"
    assert info["State"]["ExitCode"] == 3
    assert info["Path"] == "sh"
    result = hutch("run", "--name", "keep", busybox, "true")
    assert result.code == 125 and "already in use" in result.err
    hutch.ok("rm", "keep")
    assert "keep" not in hutch.ok("ps", "-a")
    assert not list((hutch.root / "containers").iterdir())


def test_rm_cleans_everything(hutch, busybox):
    hutch.ok("run", "--rm", busybox, "true")
    assert hutch.ok("ps", "-aq") == ""
    assert list((hutch.root / "containers").iterdir()) == []


def test_detached_run_then_force_remove(hutch, busybox):
    cid = hutch.ok("run", "-d", "--name", "bg", busybox, "sleep", "300").strip()
    assert len(cid) == 64
    assert "bg" in hutch.ok("ps")
    info = json.loads(hutch.ok("inspect", "bg"))[0]
    assert info["State"]["Running"] and info["State"]["Pid"] > 0
    result = hutch("rm", "bg")
    assert result.code == 1 and "is running" in result.err
    hutch.ok("rm", "-f", "bg")
    assert hutch.ok("ps", "-aq") == ""


def test_detached_output_goes_to_the_log_in_cri_format(hutch, busybox):
    cid = hutch.ok("run", "-d", busybox, "sh", "-c", "echo out; echo err >&2; printf tail").strip()
    assert hutch.ok("wait", cid) == "0\n"
    records = (hutch.root / "containers" / cid / "container.log").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"
    assert sorted(re.sub(stamp, "T", line) for line in records) == [
        "T stderr F err",
        "T stdout F out",
        "T stdout P tail",
    ]
    hutch.ok("rm", cid)


def test_sigterm_to_hutch_is_forwarded(hutch, busybox):
    proc = subprocess.Popen(
        hutch.argv(
            "run",
            "--rm",
            busybox,
            "sh",
            "-c",
            "trap 'echo got TERM; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ),
        env=hutch.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "ready\n"
    proc.terminate()
    assert proc.wait(timeout=20) == 42
    assert proc.stdout.read() == "got TERM\n"


def test_tty_through_a_pty(hutch, busybox):
    """-it gives the container a terminal; its size follows ours and Ctrl-C reaches it as a signal."""
    answers, after, code = shell_session(hutch.argv("run", "--rm", "-it", busybox, "sh"), hutch.env)
    assert b"/dev/pts/0" in answers
    assert b"33 101" in answers
    assert b"after-2" in after
    assert code == 5


def test_image_config_is_honoured_and_flags_override_it(hutch, busybox_tar):
    hutch.ok(
        "import",
        "-c",
        'ENTRYPOINT ["/bin/sh", "-c"]',
        "-c",
        'CMD ["echo $GREETING from $(pwd) as $(id -un)"]',
        "-c",
        "ENV GREETING=hello",
        "-c",
        "WORKDIR /tmp",
        "-c",
        "USER hutch",
        str(busybox_tar),
        "configured",
    )
    assert hutch.ok("run", "--rm", "configured") == "hello from /tmp as hutch\n"
    assert (
        hutch.ok(
            "run",
            "--rm",
            "-e",
            "GREETING=hi",
            "-w",
            "/",
            "-u",
            "root",
            "configured",
            "echo $GREETING from $(pwd) as $(id -un)",
        )
        == "hi from / as root\n"
    )
    assert hutch.ok("run", "--rm", "--entrypoint", "/bin/echo", "configured", "plain") == "plain\n"


def test_corrupt_tarball_import_is_one_line_and_changes_nothing(hutch, busybox, tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)
    before = hutch.ok("images", "-q")
    result = hutch("import", str(bad), "broken")
    assert result.code == 125 and len(result.err.strip().splitlines()) == 1
    assert hutch.ok("images", "-q") == before


def test_the_command_runs_inside_its_own_cgroup(hutch, busybox):
    out = hutch.ok("run", "--rm", busybox, "cat", "/proc/self/cgroup")
    paths = {controllers: path for _, controllers, path in (line.split(":", 2) for line in out.splitlines())}
    # v1 (and hybrid): the pids hierarchy; pure v2: the unified line
    path = paths.get("pids") or paths[""]
    assert f"/{os.environ['HUTCH_CGROUP_PARENT']}/" in path and len(path.rsplit("/", 1)[-1]) == 64, out
