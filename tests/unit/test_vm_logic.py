"""Pure logic of the microVM backend: module order, the cpio writer, the guest script, the QEMU argv."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from hutch.engine.options import check_isolation, parse_memory_mib
from hutch.errors import HutchError, InvalidArgument
from hutch.vm import agentconf, frames, initramfs, qemu, script

DEP = """\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/erofs/erofs.ko.xz: kernel/lib/libcrc32c.ko.xz
kernel/lib/libcrc32c.ko.xz:
"""


def test_load_order_puts_dependencies_first_and_skips_builtins():
    deps = initramfs.parse_modules_dep(DEP)
    order = initramfs.load_order(("virtio_mmio", "erofs", "overlay"), deps, builtin={"overlay"})
    assert order == [
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_mmio.ko",
        "kernel/lib/libcrc32c.ko.xz",
        "kernel/fs/erofs/erofs.ko.xz",
    ]


def test_missing_driver_is_named():
    with pytest.raises(HutchError, match="no virtio_blk driver"):
        initramfs.load_order(("virtio_blk",), initramfs.parse_modules_dep(DEP), builtin=set())


def test_modules_load_dependencies_first():
    deps = initramfs.parse_modules_dep(DEP)
    order = initramfs.load_order(("virtio_mmio", "erofs"), deps, builtin=set())
    assert [initramfs.module_name(p) for p in order] == [
        "virtio_ring",
        "virtio",
        "virtio_mmio",
        "libcrc32c",
        "erofs",
    ]


def test_strip_signature_removes_what_sign_file_appends():
    body = b"\x7fELF module body"
    signature = b"S" * 300
    info = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + len(signature).to_bytes(4, "big")
    signed = body + signature + info + b"~Module signature appended~\n"
    assert initramfs.strip_signature(signed) == body
    assert initramfs.strip_signature(body) == body  # unsigned: as it is


def test_signatures_are_kept_for_a_kernel_that_enforces_them(tmp_path):
    (tmp_path / "config-6.1-forced").write_text("CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n")
    (tmp_path / "config-6.1-debian").write_text("CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\n")
    assert initramfs.signatures_enforced("6.1-forced", tmp_path)
    assert not initramfs.signatures_enforced("6.1-debian", tmp_path)
    assert not initramfs.signatures_enforced("6.1-no-config", tmp_path)


def test_a_real_signed_module_is_stripped_to_its_elf_image():
    from hutch.vm import kernel

    try:
        k = kernel.find_kernel()
    except HutchError:
        pytest.skip("no cloud kernel on this host")
    deps = initramfs.parse_modules_dep((k.modules_dir / "modules.dep").read_text())
    raw = (k.modules_dir / deps["virtio_ring"][0]).read_bytes()
    if not raw.endswith(b"~Module signature appended~\n"):
        pytest.skip("modules are not signed (or compressed) here")
    stripped = initramfs.strip_signature(raw)
    assert stripped[:4] == b"\x7fELF" and len(raw) - 4096 < len(stripped) < len(raw)


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")
def test_cpio_is_read_back_by_a_real_cpio(tmp_path):
    archive = initramfs.Cpio()
    archive.directory("bin")
    archive.file("bin/hello", b"hello\n", 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.device("dev-console", 5, 1)
    data = archive.finish()
    assert len(data) % 512 == 0
    listing = subprocess.run(["busybox", "cpio", "-tv"], input=data, capture_output=True, check=True)
    lines = listing.stdout.decode().splitlines()
    assert [line.split()[-1] for line in lines][:3] == ["bin", "bin/hello", "busybox"]
    assert lines[1].startswith("-rwxr-xr-x") and lines[3].startswith("crw-------")
    subprocess.run(["busybox", "cpio", "-id"], input=data, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "bin" / "hello").read_bytes() == b"hello\n"


def _spec(**process) -> dict:
    base = {"args": ["sh", "-c", "echo $X"], "env": ["PATH=/bin"], "cwd": "/"}
    base.update(process)
    return {"process": base, "hostname": "h", "mounts": [], "annotations": {}}


def _records(config: bytes) -> dict[int, list[bytes]]:
    """The guest agent's config read back the way the agent (native/vmagent/config.c) reads it."""
    (total,) = struct.unpack_from("<I", config)
    assert total == len(config) - 4
    found: dict[int, list[bytes]] = {}
    at = 4
    while at < len(config):
        tag, length = struct.unpack_from("<II", config, at)
        found.setdefault(tag, []).append(config[at + 8 : at + 8 + length])
        at += 8 + length
    return found


def test_the_agent_gets_args_env_cwd_and_set_up_steps_verbatim(tmp_path):
    hostile = "X=a'b; $(reboot) `id`"
    spec = _spec(env=["PATH=/bin", hostile], cwd="/we ird")
    spec["mounts"] = [{"type": "tmpfs", "destination": "/x $(id)", "options": ["rw", "noexec", "size=1m"]}]
    spec["root"] = {"readonly": True}
    rec = _records(script.agent_config(spec, [tmp_path], None))
    assert b"/newroot/x $(id)\0" in rec[agentconf.MKDIR] and b"/newroot/we ird\0" in rec[agentconf.MKDIR]
    mounts = [(struct.unpack_from("<Q", m)[0], m[8:].split(b"\0")[:4]) for m in rec[agentconf.MOUNT]]
    assert (8, [b"tmpfs", b"tmpfs", b"/newroot/x $(id)", b"size=1m"]) in mounts  # noexec is MS_NOEXEC
    assert mounts[-1] == (32 | 1, [b"", b"", b"/newroot", b""])  # --read-only: a remount, last
    assert rec[agentconf.HOSTNAME] == [b"h\0"] and agentconf.DEVICES not in rec  # /dev is staged:
    assert (8192, [b"", b"/stage/dev", b"/newroot/dev", b""]) in mounts  # moved in (MS_MOVE)
    staged = _records(agentconf.block(script.stage_records(spec, None)))
    assert staged[agentconf.DEVICES] == [b"/stage/dev\0"] and agentconf.ARG not in staged
    assert rec[agentconf.ARG] == [b"sh\0", b"-c\0", b"echo $X\0"]
    assert rec[agentconf.ENV] == [b"PATH=/bin\0", hostile.encode() + b"\0", b"HOME=/\0"]
    assert rec[agentconf.CWD] == [b"/we ird\0"] and rec[agentconf.ROOT] == [b"/newroot\0"]
    assert struct.unpack("<I", rec[agentconf.UID][0]) == (0,)  # root keeps root


def test_agent_config_user_groups_caps_limits_and_seccomp(tmp_path):
    lower, upper = tmp_path / "l1", tmp_path / "l2"
    (lower / "etc").mkdir(parents=True)
    (upper / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (upper / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:33:44::/srv:/bin/sh\n")
    (lower / "etc" / "group").write_text("web:x:44:\nwheel:x:10:web\n")
    caps = ["CAP_CHOWN", "CAP_KILL"]
    spec = _spec(
        capabilities={"bounding": caps, "effective": caps, "permitted": caps},
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 2**64 - 1}],
        noNewPrivileges=True,
    )
    spec["linux"] = {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}}
    program = b"\x06" + b"\0" * 7
    rec = _records(script.agent_config(spec, [lower, upper], program))
    mask = (1 << 0) | (1 << 5)
    assert struct.unpack("<5Q", rec[agentconf.CAPS][0]) == (mask, mask, mask, 0, 0)
    assert rec[agentconf.RLIMIT] == [struct.pack("<IIQQ", 7, 0, 123, 2**64 - 1)]
    assert agentconf.NNP in rec and agentconf.SECCOMP not in rec  # the container's filter is staged
    staged = _records(agentconf.block(script.stage_records(spec, program)))
    assert staged[agentconf.SECCOMP] == [program]
    assert staged[agentconf.SECCOMP_FLAGS] == [struct.pack("<I", 2)]
    spec["annotations"]["io.hutch.user"] = "web"
    rec = _records(script.agent_config(spec, [lower, upper], program, root=None))
    assert rec[agentconf.SECCOMP] == [program]  # an exec's filter comes with it
    assert [struct.unpack("<I", v)[0] for v in rec[agentconf.UID] + rec[agentconf.GID]] == [33, 44]
    assert [struct.unpack("<I", v)[0] for v in rec[agentconf.GROUP]] == [10]  # the image's /etc/group
    assert struct.unpack("<5Q", rec[agentconf.CAPS][0]) == (mask, 0, 0, 0, 0)  # non-root: bounding only
    assert b"HOME=/srv\0" in rec[agentconf.ENV] and agentconf.ROOT not in rec  # an exec joins the root
    with pytest.raises(HutchError, match="not compiled"):
        script.stage_records(spec, None)
    spec["annotations"]["io.hutch.user"] = "nobody-here"
    with pytest.raises(HutchError, match="unable to find user nobody-here"):
        script.agent_config(spec, [lower, upper], program)


def test_exec_frames_split_only_complete_frames():
    buf = bytearray(frames.pack(frames.STDOUT, 3, b"hello") + frames.pack(frames.EXIT, 3, b"\x07\0\0\0"))
    tail = frames.pack(frames.STDERR, 3, b"partial")
    buf += tail[:-2]
    assert frames.split(buf) == [(frames.STDOUT, 3, b"hello"), (frames.EXIT, 3, b"\x07\0\0\0")]
    assert bytes(buf) == tail[:-2]
    buf += tail[-2:]
    assert frames.split(buf) == [(frames.STDERR, 3, b"partial")] and buf == b""


def test_qemu_command_has_the_measured_recipe():
    argv = qemu.command(
        kernel="/k",
        initrd="/i",
        disk="/d.erofs",
        accel="tcg",
        memory_mib=128,
        cpus=2,
        port_fds={name: 10 + n for n, name in enumerate(qemu.PORTS)},
        console_log="/c.log",
        khz=2445404,
    )
    joined = " ".join(argv)
    assert "microvm,pit=on,rtc=on" in joined
    assert "tsc_early_khz=2445404" in argv[argv.index("-append") + 1]
    assert "tsc=reliable" in argv[argv.index("-append") + 1].split()
    assert argv[argv.index("-cpu") + 1] == "qemu64,+arat"  # tickless when idle under TCG
    assert qemu.cpu_model("kvm") == "host"
    assert "-nodefaults" in argv and argv[argv.index("-m") + 1] == "128M"
    assert "socket,id=p1,fd=10" in joined and "name=hutch.ctl" in joined
    assert "driver=raw,node-name=root,file=disk,read-only=on" in joined


def test_kvm_runs_the_slim_microvm_build_unless_a_volume_needs_the_full_one(monkeypatch):
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: path == qemu.QEMU_MICROVM)
    assert qemu.binary("kvm") == qemu.QEMU_MICROVM
    assert qemu.binary("kvm", volumes=True) == qemu.QEMU  # virtiofs: vhost-user-fs is in the full build
    assert qemu.binary("tcg") == qemu.QEMU  # the slim build has no TCG
    assert qemu.boot_identity("kvm", 1000).startswith(f"{qemu.QEMU_MICROVM} host ")
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: False)
    assert qemu.binary("kvm") == qemu.QEMU  # not installed: the full build
    argv = qemu.command(
        kernel=None, initrd="/i", disk=None, accel="kvm", memory_mib=128, cpus=1, port_fds={},
        console_log="/c", khz=0, program=qemu.QEMU_MICROVM,
    )  # fmt: skip
    assert argv[0] == qemu.QEMU_MICROVM and argv[argv.index("-cpu") + 1] == "host"


def test_memory_and_isolation_flags():
    assert parse_memory_mib("128m") == 128
    assert parse_memory_mib("1g") == 1024
    assert parse_memory_mib("268435456") == 256
    assert parse_memory_mib("200MB") == 200
    for bad in ("64m", "lots", "12x"):
        with pytest.raises(InvalidArgument):
            parse_memory_mib(bad)
    assert check_isolation("vm") == "vm" and check_isolation("container") == "container"
    with pytest.raises(InvalidArgument, match="'kata'"):
        check_isolation("kata")


def test_kernel_release_and_payload_of_the_host_cloud_kernel():
    import glob
    from pathlib import Path

    from hutch.vm import kernel

    found = sorted(glob.glob("/boot/vmlinuz-*cloud*"))
    if not found:
        pytest.skip("no cloud kernel installed")
    path = Path(found[-1])
    assert kernel.release_of(path) == path.name.removeprefix("vmlinuz-")
    data = kernel.payload(path.read_bytes())
    magics = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18")
    assert any(data.startswith(m) for m in magics)


def test_template_ram_is_shared_while_built_and_private_in_clones(tmp_path):
    from hutch.vm import template

    path = template.template_path(tmp_path, "/k", "/i", 128, 1, "tcg")
    assert path != template.template_path(tmp_path, "/k", "/i", 256, 1, "tcg")  # memory is in the key
    ram = template.ram_path(path)
    machine, built = template.ram_args(ram, 128, share=True)
    _, clone = template.ram_args(ram, 128, share=False)
    assert machine == ",memory-backend=mem"
    assert built[1].endswith(f"mem-path={ram},share=on") and clone[1].endswith(f"mem-path={ram},share=off")


def test_template_names_follow_the_build_the_shape_and_the_stage(tmp_path):
    from hutch.vm import template

    def name(**changes) -> str:
        args = {"vmlinux": "/v", "initrd": "/i", "memory_mib": 128, "cpus": 1, "accel": "tcg", "stage": b"s"}
        return template.template_path(tmp_path, **{**args, **changes}).stem

    base = name()
    build, shape = base.split("-")
    assert name() == base and len(build) == 16 and len(shape) == 8  # stable, and short
    assert name(initrd="/j").split("-") != [build, shape] and name(initrd="/j").endswith(shape)
    # another QEMU build, CPU model or kernel command line is another build: its templates replace these
    assert name(boot="qemu-system-x86_64-microvm host ...").split("-")[0] != build
    for other in (name(memory_mib=256), name(nic=True), name(stage=b"privileged")):
        assert other.startswith(build + "-") and other != base  # same build, another shape: side by side


def test_cache_keys_are_short_and_tell_inputs_apart():
    from hutch.vm.cachekey import short_key

    keys = {short_key(f"/boot/vmlinuz:{size}:{mtime}") for size in range(50) for mtime in range(50)}
    assert len(keys) == 2500 and all(len(k) == 16 for k in keys)
    assert short_key(b"x", 8) == short_key("x")[:8]
