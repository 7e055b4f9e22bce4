"""The security probe: one script inside the container reports what it can do, under the defaults and
under each weakening flag, so each assertion is shown able to fail."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.root

PROBE = Path(__file__).resolve().parent.parent / "data" / "security_probe.sh"


def _probe(hutch, image, *flags) -> dict:
    out = hutch.ok(
        "run", "--rm", "--hostname", "probe", "-v", f"{PROBE}:/probe.sh:ro", *flags, image, "sh", "/probe.sh"
    )
    return dict(line.split("=", 1) for line in out.splitlines())


def test_defaults_from_the_inside(hutch, busybox):
    p = _probe(hutch, busybox)
    assert p["pid"] == "1" and p["hostname"] == "probe"
    assert p["cap_eff"] == p["cap_bnd"] == "00000000a80425fb"
    assert p["seccomp"] == "2"
    assert p["timer_list_bytes"] == "0" and p["keys_bytes"] == "0" and p["sys_firmware_entries"] == "0"
    assert p["proc_sys_write"] == "refused" and p["sysrq_write"] == "refused"
    assert p["mount_tmpfs"] == "refused"
    assert p["unshare_user"] == "refused"
    assert p["block_device"] == "refused"
    assert p["fds"].split() == ["0", "1", "2", "3"]  # 3: ls's own view of the directory
    assert int(p["processes"]) <= 4


def test_defaults_hold_in_a_user_namespace_and_unconfined_shows_it_is_the_namespace_too(hutch, busybox):
    from test_userns import SUBID_FILES

    saved = {path: path.read_bytes() for path in SUBID_FILES}
    try:
        for path in SUBID_FILES:
            path.write_bytes(saved[path] + b"root:300000:65536\n")
        p = _probe(hutch, busybox, "--userns=auto")
        assert p["cap_eff"] == "00000000a80425fb" and p["seccomp"] == "2"
        assert p["mount_tmpfs"] == "refused" and p["unshare_user"] == "refused"
        assert p["proc_sys_write"] == "refused" and p["block_device"] == "refused"
        # Without seccomp, root could make a nested user namespace, yet still not mount: the mount
        # namespace belongs to the host's user namespace.
        p = _probe(hutch, busybox, "--userns=auto", "--security-opt", "seccomp=unconfined")
        assert p["seccomp"] == "0" and p["mount_tmpfs"] == "refused"
    finally:
        for path, content in saved.items():
            path.write_bytes(content)


def test_privileged_shows_every_weakening(hutch, busybox):
    p = _probe(hutch, busybox, "--privileged")
    assert p["cap_eff"] != "00000000a80425fb"
    assert p["seccomp"] == "0"
    assert int(p["timer_list_bytes"]) > 0 and int(p["sys_firmware_entries"]) > 0
    assert p["mount_tmpfs"] == "allowed"
    assert p["block_device"] == "allowed"


def test_seccomp_unconfined_only_lifts_the_filter(hutch, busybox):
    p = _probe(hutch, busybox, "--security-opt", "seccomp=unconfined")
    assert p["seccomp"] == "0"
    assert p["unshare_user"] == "allowed"  # user namespaces need no capability, only the filter stopped it
    assert p["cap_eff"] == "00000000a80425fb"
    assert p["mount_tmpfs"] == "refused"  # still no CAP_SYS_ADMIN


def test_clone3_and_posix_spawn_work_under_the_default_profile(hutch, busybox_tar, tmp_path):
    """glibc tries clone3 first and falls back only on ENOSYS: the profile must answer ENOSYS."""
    import shutil
    import subprocess
    import tarfile

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    binary = tmp_path / "spawn_probe"
    source = PROBE.parent / "spawn_probe.c"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(source)], check=True)
    image = tmp_path / "spawn.tar"
    with tarfile.open(busybox_tar) as src, tarfile.open(image, "w") as out:
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        out.add(binary, "usr/bin/spawn_probe")
    hutch.ok("import", str(image), "spawner")
    out = hutch.ok("run", "--rm", "spawner", "spawn_probe", "/bin/true")
    assert "clone3=ENOSYS" in out
    assert "posix_spawn=ok status=0" in out
