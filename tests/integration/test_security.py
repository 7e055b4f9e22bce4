"""Security defaults and the flags that change them, observed from inside real containers."""

import pytest

pytestmark = pytest.mark.root


def _status(hutch, image, *flags) -> dict:
    out = hutch.ok("run", "--rm", *flags, image, "cat", "/proc/self/status")
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def test_default_capabilities_are_dockers(hutch, busybox):
    status = _status(hutch, busybox)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert status[field].strip() == "00000000a80425fb"
    assert status["CapInh"].strip() == "0000000000000000"
    assert status["CapAmb"].strip() == "0000000000000000"
    assert status["NoNewPrivs"].strip() == "0"


def test_cap_drop_and_add(hutch, busybox):
    status = _status(hutch, busybox, "--cap-drop", "ALL", "--cap-add", "NET_ADMIN")
    assert status["CapEff"].strip() == "0000000000001000"
    assert status["CapBnd"].strip() == "0000000000001000"
    # without CAP_CHOWN root cannot give a file away
    result = hutch("run", "--rm", "--cap-drop", "CHOWN", busybox, "chown", "1000", "/tmp")
    assert result.code != 0 and "Operation not permitted" in result.err


def test_privileged_lifts_masks_and_read_only_sys(hutch, busybox):
    out = hutch.ok(
        "run",
        "--rm",
        "--privileged",
        busybox,
        "sh",
        "-c",
        "wc -c < /proc/timer_list; grep ' /sys ' /proc/mounts",
    )
    size, sys_mount = out.splitlines()
    assert int(size) > 0
    assert " rw," in sys_mount


def test_no_new_privileges(hutch, busybox):
    assert _status(hutch, busybox, "--security-opt", "no-new-privileges")["NoNewPrivs"].strip() == "1"


def test_ulimit_is_applied(hutch, busybox):
    assert (
        hutch.ok("run", "--rm", "--ulimit", "nofile=100:200", busybox, "sh", "-c", "ulimit -n; ulimit -Hn")
        == "100\n200\n"
    )


def test_ulimit_above_our_hard_limit_is_refused_before_anything_starts(hutch, busybox):
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("nofile has no hard limit here")
    from hutch.engine.security import own_capabilities

    if "CAP_SYS_RESOURCE" in own_capabilities():
        pytest.skip("this process has CAP_SYS_RESOURCE and may raise the limit")
    result = hutch("run", "--rm", "--name", "toomany", "--ulimit", f"nofile=10:{hard + 1}", busybox, "true")
    assert result.code == 125
    assert "CAP_SYS_RESOURCE" in result.err and len(result.err.strip().splitlines()) == 1
    assert hutch.ok("ps", "-aq") == ""


def test_non_root_user_has_no_effective_capabilities(hutch, busybox):
    status = _status(hutch, busybox, "-u", "1000")
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["CapPrm"].strip() == "0000000000000000"
    assert status["CapBnd"].strip() == "00000000a80425fb"


def test_info_reports_host_support(hutch, busybox):
    import json

    info = json.loads(hutch.ok("info", "--format", "json"))
    assert info["Images"] == 1
    assert info["Cgroups"]["version"] in ("v1", "v2")
    assert info["Seccomp"]["kernel"] is True
    assert set(info["KVM"]) == {"present", "usable"}
    text = hutch.ok("info")
    assert "Cgroup Version:" in text and "seccomp:" in text and "KVM:" in text


def test_symlinked_mount_destination_stays_inside_the_container(hutch, busybox_tar, tmp_path):
    """An image whose /etc/hosts points out of its root must not make hutch mount onto the host."""
    import io
    import tarfile

    target = tmp_path / "host-side-target"
    target.write_text("host file\n")
    crafted = tmp_path / "crafted.tar"
    with tarfile.open(busybox_tar) as src, tarfile.open(crafted, "w") as out:
        for member in src.getmembers():
            if member.name.lstrip("./") in ("etc/hosts", "etc/hostname"):
                continue
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        for name in ("etc/hosts", "etc/hostname"):
            link = tarfile.TarInfo(name)
            link.type = tarfile.SYMTYPE
            link.linkname = "../../../../../../../.." + str(target)
            out.addfile(link, io.BytesIO())
    hutch.ok("import", str(crafted), "crafted")
    out = hutch.ok("run", "--rm", "--hostname", "inside", "crafted", "cat", str(target))
    assert "localhost" in out  # the container's hosts file, bound inside the container's root
    assert target.read_text() == "host file\n"
    with open("/proc/self/mountinfo") as f:
        assert str(target) not in f.read()


def test_devices_beyond_the_standard_ones_are_refused(hutch, busybox):
    out = hutch.ok(
        "run",
        "--rm",
        busybox,
        "sh",
        "-c",
        "mknod /tmp/blk b 7 0 && head -c1 /tmp/blk; echo rc=$?; ls /dev/kmsg /dev/vda 2>&1 | wc -l",
    )
    assert "Operation not permitted" in out or "rc=1" in out
    assert "rc=0" not in out


def test_device_flag_adds_one_device(hutch, busybox):
    import os

    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control on this host")
    out = hutch.ok(
        "run",
        "--rm",
        "--device",
        "/dev/loop-control:/dev/lc:rw",
        busybox,
        "sh",
        "-c",
        "ls -l /dev/lc; head -c0 /dev/lc && echo opened",
    )
    assert out.startswith("c") and "10, 237" in out and "opened" in out


def test_privileged_gets_host_devices(hutch, busybox):
    import os

    host_loops = [d for d in os.listdir("/dev") if d.startswith("loop") and d[4:].isdigit()]
    if not host_loops:
        pytest.skip("no loop devices on this host")
    out = hutch.ok(
        "run", "--rm", "--privileged", busybox, "sh", "-c", f"head -c0 /dev/{host_loops[0]} && echo ok"
    )
    assert out == "ok\n"


def test_bad_device_is_one_line_before_anything_starts(hutch, busybox):
    result = hutch("run", "--rm", "--device", "/no/such/device", busybox, "true")
    assert result.code == 125 and "/no/such/device" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert hutch.ok("ps", "-aq") == ""
