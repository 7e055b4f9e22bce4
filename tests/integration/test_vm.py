"""``--isolation vm``: the same busybox image run inside a real QEMU microvm guest.

Each boot under TCG costs a core for 2-4 s, so the checks are packed into few runs. Every test also checks
that nothing is left: no QEMU process, no container directory, no temp file in the root.
"""

from __future__ import annotations

import os
import platform
import shutil
import time

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

VM = ("--isolation", "vm", "--vm-accel", "tcg")
_kvm_verdict: dict[str, bool] = {}


def _qemu_pids(root) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if cmd.startswith(b"qemu-system") and str(root).encode() in cmd:
                found.append(int(entry))
    return found


def _assert_nothing_left(hutch) -> None:
    assert _qemu_pids(hutch.root) == []
    assert os.listdir(hutch.root / "containers") == []
    leftovers = [n for n in os.listdir(hutch.root / "tmp")] if (hutch.root / "tmp").exists() else []
    assert leftovers == []
    for sub in ("disks", "templates"):
        d = hutch.root / "cache" / "vm" / sub
        assert not d.exists() or [n for n in os.listdir(d) if n.startswith(".")] == []  # no temp files


def test_echo_hi_from_a_template_clone(hutch, busybox):
    # The first run boots the template guest, saves it and restores a clone; the second only restores.
    for _ in range(2):
        result = hutch("run", "--rm", *VM, busybox, "echo", "hi", timeout=120)
        assert (result.code, result.out) == (0, "hi\n"), result.err
    templates = sorted(p.suffix for p in (hutch.root / "cache" / "vm" / "templates").iterdir())
    assert templates == [".mig", ".ram"]  # device state, and the RAM file clones map
    # A clone's clocks resume where the template's stood when it was saved: the host sets the time.
    time.sleep(3)
    before = int(time.time())
    guest = hutch.ok("run", "--rm", *VM, busybox, "date", "+%s", timeout=120)
    assert before - 1 <= int(guest) <= time.time() + 1, f"guest {guest.strip()}, host {before}"
    _assert_nothing_left(hutch)
    disks = hutch.root / "cache" / "vm" / "disks"
    assert len(list(disks.glob("*.erofs"))) == 1
    hutch.ok("rmi", busybox)
    assert list(disks.glob("*.erofs")) == []  # the image's microVM disk goes with the image


def test_an_idle_guest_stops_its_timer_tick(hutch, busybox):
    # A periodic 250 Hz tick would be 500 timer interrupts in 2 s: each costs the host CPU, for
    # every idle guest. With an always-running APIC timer (ARAT) the kernel goes tickless when idle.
    count = "set -- $(grep intr /proc/stat); echo $2"  # every interrupt since boot
    script = f"a=$({count}); sleep 2; b=$({count}); echo $((b - a))"
    result = hutch("run", "--rm", *VM, busybox, "sh", "-c", script, timeout=120)
    assert result.code == 0, result.err
    assert int(result.out) < 150, f"{result.out.strip()} timer interrupts in 2 s of sleep"
    _assert_nothing_left(hutch)


def test_clones_keep_all_output_templates_follow_the_security_profile_and_a_broken_one_is_rebuilt(
    hutch, busybox
):
    # QEMU is killed as soon as the guest reports the exit: everything written before it must be out.
    result = hutch("run", "--rm", *VM, busybox, "sh", "-c", "seq 1 60000; echo done >&2; exit 3", timeout=120)
    assert result.code == 3 and result.out == "".join(f"{n}\n" for n in range(1, 60001))
    assert result.err == "done\n"
    templates = hutch.root / "cache" / "vm" / "templates"
    (saved,) = templates.glob("*.mig")
    # The staged /proc, /sys, /dev and seccomp filter are part of a template: --privileged has its own.
    assert hutch.ok("run", "--rm", "--privileged", *VM, busybox, "cat", "/proc/self/status", timeout=120)
    assert len(list(templates.glob("*.mig"))) == 2
    saved.write_bytes(saved.read_bytes()[:3000])  # a template that no longer loads
    broken = hutch("run", "--rm", *VM, busybox, "true", timeout=120)
    assert broken.code == 125 and "loading the template" in broken.err and len(broken.err.splitlines()) == 1
    assert not saved.exists()  # deleted: the next start builds a fresh one
    assert hutch("run", "--rm", *VM, busybox, "echo", "again", timeout=120).out == "again\n"
    _assert_nothing_left(hutch)


def test_cold_boot_env_workdir_user_stdin_exit_code_and_kernel(hutch, busybox):
    script = 'echo "$FOO"; pwd; id -u; id -g; hostname; uname -r; cat; echo oops >&2; exit 7'
    result = hutch(
        "run", "--rm", "-i", *VM, "--vm-template", "off", "-e", "FOO=b'a r$(x)", "-w", "/srv/work",
        "-u", "1000:1000", "-h", "guest1", busybox, "sh", "-c", script,
        input="from stdin\nline two\n",
        timeout=120,
    )  # fmt: skip
    assert result.code == 7, result.err
    lines = result.out.splitlines()
    assert lines[:5] == ["b'a r$(x)", "/srv/work", "1000", "1000", "guest1"]
    assert lines[5] != platform.release()  # the guest runs its own kernel
    assert lines[6:] == ["from stdin", "line two"]
    assert result.err.endswith("oops\n")
    _assert_nothing_left(hutch)


def test_detached_logs_and_stop_forwards_the_signal(hutch, busybox):
    cid = hutch.ok(
        "run", "-d", "--name", "v", *VM, busybox,
        "sh", "-c", 'echo started; trap "echo got term; exit 3" TERM; while :; do sleep 1; done',
        timeout=120,
    ).strip()  # fmt: skip
    assert len(cid) == 64
    assert "Up" in hutch.ok("ps")
    deadline = time.monotonic() + 30
    while "started" not in hutch.ok("logs", "v") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_qemu_pids(hutch.root)) == 1
    _check_exec(hutch, "v")
    hutch.ok("stop", "v", timeout=60)
    assert hutch.ok("logs", "v") == "started\ngot term\n"
    assert "Exited (3)" in hutch.ok("ps", "-a")
    hutch.ok("rm", "v")
    _assert_nothing_left(hutch)


@pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"), reason="needs virtiofsd")
def test_volumes_over_virtiofs(hutch, busybox, tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (rw / "in").write_text("from the host\n")
    (ro / "keep").write_text("untouched\n")
    script = "cat /data/in; echo from the guest > /data/out; (echo x > /ro/keep) 2>/dev/null || echo refused"
    result = hutch(
        "run", "--rm", *VM, "-v", f"{rw}:/data", "-v", f"{ro}:/ro:ro", busybox, "sh", "-c", script,
        timeout=120,
    )  # fmt: skip
    assert (result.code, result.out) == (0, "from the host\nrefused\n"), result.err
    assert (rw / "out").read_text() == "from the guest\n"
    assert (ro / "keep").read_text() == "untouched\n"
    daemons = [p for p in os.listdir("/proc") if p.isdigit() and str(rw).encode() in _cmdline(p)]
    assert daemons == []  # every virtiofsd is gone
    _assert_nothing_left(hutch)


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_errors_are_one_line_exit_125_and_leave_nothing(hutch, busybox, tmp_path):
    bad_kernel = tmp_path / "not-a-kernel"
    bad_kernel.write_bytes(b"garbage" * 100)
    cases = [
        (("--vm-kernel", str(bad_kernel)), "not a bzImage"),
        (("--vm-kernel", str(tmp_path / "missing")), "no such file"),
        (("--vm-memory", "20m"), "at least 80m"),
        (("--vm-memory", "4000000g"), "Cannot allocate memory"),
        (("--vm-accel", "warp"), "invalid --vm-accel 'warp'"),
    ]
    for flags, message in cases:
        result = hutch("run", "--rm", *VM, *flags, busybox, "true", timeout=120)
        assert result.code == 125, (flags, result)
        assert message in result.err and result.err.count("\n") == 1, (flags, result.err)
    hutch.env["HUTCH_VM_BOOT_TIMEOUT"] = "0.2"
    result = hutch("run", "--rm", *VM, busybox, "true", timeout=120)
    assert result.code == 125 and "did not come up within 0.2 s" in result.err, result.err
    assert hutch.ok("ps", "-aq") == ""
    _assert_nothing_left(hutch)


def test_auto_accel_probes_kvm_once_and_falls_back_with_a_warning(hutch, busybox):
    result = hutch("run", "--rm", "--isolation", "vm", busybox, "echo", "auto", timeout=180)
    assert (result.code, result.out) == (0, "auto\n"), result.err
    verdicts = list((hutch.root / "cache" / "vm").glob("accel-*.json"))
    assert len(verdicts) == (1 if os.access("/dev/kvm", os.W_OK) else 0)
    import json

    kvm = bool(verdicts) and json.loads(verdicts[0].read_text())["kvm"]
    _kvm_verdict["kvm"] = kvm
    assert ("using TCG" in result.err) == (not kvm)
    _assert_nothing_left(hutch)


def test_kvm_cold_boot(hutch, busybox):
    if not _kvm_verdict.get("kvm"):
        pytest.skip("KVM cannot run the guest kernel on this host (the probe fell back to TCG)")
    start = time.monotonic()
    result = hutch("run", "--rm", "--isolation", "vm", "--vm-accel", "kvm", busybox, "true", timeout=60)
    assert result.code == 0, result.err
    assert time.monotonic() - start < 5
    _assert_nothing_left(hutch)


def test_foreground_run_forwards_signals_into_the_guest(hutch, busybox):
    import signal
    import subprocess

    script = 'trap "echo got int; exit 5" INT; echo ready; while :; do sleep 1; done'
    proc = subprocess.Popen(
        hutch.argv("run", "--rm", *VM, busybox, "sh", "-c", script),
        env=hutch.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (5, "got int\n"), err
    _assert_nothing_left(hutch)


def _check_exec(hutch, name: str) -> None:
    """``exec`` runs inside the guest (the container's pid namespace: the command's pid 1 is there), with
    the container's set-up, stdin, output, exit codes and a terminal."""
    ran = hutch("exec", name, "sh", "-c", 'ps | grep -c "[w]hile :"; uname -r; echo err >&2; exit 4')
    assert ran.code == 4 and ran.err == "err\n", ran
    count, release = ran.out.splitlines()
    assert count == "1" and release != platform.release()  # the guest's kernel, the container's pids
    piped = hutch("exec", "-i", "-u", "hutch", name, "sh", "-c", "cat; id -u; id -G", input="one\ntwo\n")
    assert (piped.code, piped.out) == (0, "one\ntwo\n1000\n1000 10 29\n"), piped
    missing = hutch("exec", name, "no-such-command")
    assert missing.code == 127 and "not found" in missing.err
    tty = hutch("exec", "-t", name, "sh", "-c", "tty; test -t 0 && test -t 1 && echo both")
    assert (tty.code, tty.out.splitlines()) == (0, ["/dev/pts/0", "both"]), tty
    from ptysession import shell_session

    answers, after, code = shell_session(hutch.argv("exec", "-it", name, "sh"), hutch.env)
    assert b"33 101\r\nxterm\r\n" in answers and b"after-2" in after and code == 5  # resize, ^C


PROBE = """status() { grep "^$1:" /proc/self/status | cut -f2; }
echo "cap_eff=$(status CapEff)"
echo "cap_bnd=$(status CapBnd)"
echo "seccomp=$(status Seccomp)"
echo "no_new_privs=$(status NoNewPrivs)"
echo "groups=$(id -G)"
echo "nofile=$(ulimit -n):$(ulimit -Hn)"
echo "mount_tmpfs=$(mount -t tmpfs none /tmp 2>/dev/null && echo allowed || echo refused)"
echo "unshare_user=$(unshare -U true 2>/dev/null && echo allowed || echo refused)"
echo "timer_list_bytes=$(cat /proc/timer_list 2>/dev/null | wc -c)"
echo "sysrq_write=$( (echo h > /proc/sysrq-trigger) 2>/dev/null && echo allowed || echo refused)"
"""


def _guest_probe(hutch, busybox, *flags) -> dict:
    out = hutch.ok("run", "--rm", *VM, *flags, busybox, "sh", "-c", PROBE, timeout=120)
    return dict(line.split("=", 1) for line in out.splitlines())


def test_the_guest_agent_applies_caps_seccomp_user_and_limits_and_the_flags_weaken_them(hutch, busybox):
    p = _guest_probe(hutch, busybox)
    assert p["cap_eff"] == p["cap_bnd"] == "00000000a80425fb"  # Docker's default set, as in a container
    assert (p["seccomp"], p["no_new_privs"], p["groups"]) == ("2", "0", "0")
    assert p["mount_tmpfs"] == p["unshare_user"] == "refused"
    assert (p["timer_list_bytes"], p["sysrq_write"]) == ("0", "refused")  # masked, read-only
    p = _guest_probe(
        hutch, busybox, "-u", "hutch", "--ulimit", "nofile=123:456", "--security-opt", "no-new-privileges"
    )
    assert (p["cap_eff"], p["cap_bnd"]) == ("0000000000000000", "00000000a80425fb")  # non-root: none
    assert (p["seccomp"], p["no_new_privs"]) == ("2", "1")
    assert (p["groups"], p["nofile"]) == ("1000 10 29", "123:456")  # the image's /etc/group, --ulimit
    p = _guest_probe(hutch, busybox, "--security-opt", "seccomp=unconfined", "--cap-drop", "chown")
    assert (p["seccomp"], p["cap_eff"]) == ("0", "00000000a80425fa")
    assert p["unshare_user"] == "allowed"  # seccomp was what refused it
    p = _guest_probe(hutch, busybox, "--privileged")
    assert p["seccomp"] == "0" and int(p["cap_eff"], 16) > 0xA80425FB
    assert p["mount_tmpfs"] == "allowed" and int(p["timer_list_bytes"]) > 0
    _assert_nothing_left(hutch)


def test_etc_files_are_bind_mounts_writable_in_a_read_only_root(hutch, busybox):
    # As Docker's: the engine's /etc files are mounts of their own, so a --read-only container can still
    # have its /etc/hosts rewritten (by itself, or by hutch when a peer joins its network).
    script = (
        "touch /x 2>/dev/null && echo root=rw || echo root=ro; grep -c ' /etc/hosts ' /proc/mounts;"
        " echo '10.9.9.9 extra' >> /etc/hosts && tail -1 /etc/hosts; cat /etc/hostname"
    )
    flags = ("--read-only", "--hostname", "vmbox")
    out = hutch.ok("run", "--rm", *VM, *flags, busybox, "sh", "-c", script, timeout=120)
    assert out.splitlines() == ["root=ro", "1", "10.9.9.9 extra", "vmbox"]
    _assert_nothing_left(hutch)


def test_tty_in_the_guest(hutch, busybox):
    from ptysession import shell_session

    out = hutch.ok("run", "--rm", "-t", *VM, busybox, "sh", "-c", "tty; test -t 0 && echo yes", timeout=120)
    assert out.splitlines() == ["/dev/pts/0", "yes"]
    answers, after, code = shell_session(hutch.argv("run", "--rm", "-it", *VM, busybox, "sh"), hutch.env)
    assert b"/dev/pts/0\r\n33 101\r\nxterm\r\n" in answers  # the user's window size reached the guest
    assert b"^C" in after and code == 5
    _assert_nothing_left(hutch)


def test_devices_the_guest_kernel_drives_and_a_refusal_for_the_others(hutch, busybox):
    script = (
        "stat -c '%n %t:%T %a %u:%g' /dev/fuse /dev/sub/z; head -c 3 /dev/sub/z | wc -c;"
        " exec 3<>/dev/fuse && echo fuse opened"
    )
    out = hutch.ok(
        "run", "--rm", *VM, "--device", "/dev/fuse", "--device", "/dev/zero:/dev/sub/z:r", busybox,
        "sh", "-c", script, timeout=120,
    )  # fmt: skip
    assert out.splitlines() == [
        "/dev/fuse a:e5 666 0:0",  # 10:229, with the host node's mode and owner
        "/dev/sub/z 1:5 666 0:0",
        "3",
        "fuse opened",  # the guest has the driver: the fuse module was loaded for it
    ], out
    for device in ("/dev/loop0", "/dev/net/tun"):
        if not os.path.exists(device):
            continue
        result = hutch("run", "--rm", *VM, "--device", device, busybox, "true", timeout=60)
        assert result.code == 125 and result.err.count("\n") == 1, result
        assert f"--device {device}: a microVM's kernel has no driver" in result.err, result.err
    assert hutch.ok("ps", "-aq") == ""
    _assert_nothing_left(hutch)
