"""--userns=auto and --userns-remap: container root is an unprivileged host uid, the image's files still
belong to it (idmapped layers), and each auto container gets a block of its own."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))


@pytest.fixture
def subids():
    """Give root a range of subordinate ids for the test, and put the files back as they were."""
    saved = {path: path.read_bytes() if path.exists() else None for path in SUBID_FILES}
    try:
        for path in SUBID_FILES:
            path.write_bytes((saved[path] or b"") + b"root:300000:262144\n")
        yield 300000
    finally:
        for path, content in saved.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)


def test_auto_maps_root_to_a_private_unprivileged_block(hutch, busybox, subids):
    try:
        hutch.ok("run", "-d", "--name", "a", "--userns=auto", busybox, "sleep", "60")
        hutch.ok("run", "-d", "--name", "b", "--userns=auto:size=1000", busybox, "sleep", "60")
        probe = "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox; touch /new; stat -c %u /new"
        out = hutch.ok("exec", "a", "sh", "-c", probe).split()
        assert out == ["0", "0", str(subids), "65536", "0", "0"]
        assert hutch.ok("exec", "b", "cat", "/proc/self/uid_map").split() == [
            "0",
            str(subids + 65536),
            "1000",
        ]
        info = json.loads(hutch.ok("inspect", "a"))[0]
        with open(f"/proc/{info['State']['Pid']}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert uids == [str(subids)] * 4  # on the host, nobody special
        upper = hutch.root / "containers" / info["Id"] / "upper" / "new"
        assert upper.stat().st_uid == subids
        # root in the container has Docker's capabilities, but only over its own user namespace
        denied = hutch("exec", "a", "sh", "-c", "mount -t tmpfs t /mnt")
        assert denied.code != 0
        assert "CapEff:\t00000000a80425fb" in hutch.ok("exec", "a", "cat", "/proc/self/status")
    finally:
        hutch("rm", "-f", "a", "b")


def test_remap_shares_the_users_range_and_foreground_runs_work(hutch, busybox, subids):
    out = hutch.ok("run", "--rm", "--userns-remap", "default", busybox, "cat", "/proc/self/uid_map")
    assert out.split() == ["0", str(subids), "262144"]
    assert hutch.ok("run", "--rm", "--userns=auto", "-u", "1000", busybox, "id", "-u") == "1000\n"


def test_errors(hutch, busybox, tmp_path):
    for argv, text in (
        (("--userns=sometimes",), "--userns"),
        (("--userns=auto:size=x",), "size"),
        (("--userns=auto", "--privileged"), "--privileged"),
    ):
        result = hutch("run", "--rm", *argv, busybox, "true")
        assert result.code == 125 and text in result.err and len(result.err.splitlines()) == 1


def test_auto_without_subordinate_ids_says_what_to_add(hutch, busybox):
    if any(
        line.startswith(("root:", "0:", "containers:"))
        for line in Path("/etc/subuid").read_text().splitlines()
    ):
        pytest.skip("this host grants root subordinate ids")
    result = hutch("run", "--rm", "--userns=auto", busybox, "true")
    assert result.code == 125 and "/etc/subuid" in result.err


def test_chown_copy_fallback_shifts_owners_and_is_shared_then_pruned(hutch, busybox, subids):
    """Hosts without idmapped mounts get chown-ed copies of the layers (forced here): the container sees
    its files as its own, --userns-remap containers share one copy, and the copy goes with the last one."""
    hutch.env["HUTCH_USERNS_LAYERS"] = "copy"
    shifted = hutch.root / "layers-shifted"
    try:
        hutch.ok("run", "-d", "--name", "a", "--userns-remap", "default", busybox, "sleep", "60")
        hutch.ok("run", "-d", "--name", "b", "--userns-remap", "default", busybox, "sleep", "60")
        probe = "id -u; stat -c %u:%g /bin/busybox /etc; touch /new; stat -c %u /new"
        assert hutch.ok("exec", "a", "sh", "-c", probe).split() == ["0", "0:0", "0:0", "0"]
        copies = [p for p in shifted.iterdir() if not p.name.endswith(".lock")]
        assert [p.name for p in copies] == [f"{subids}-{subids}-262144"]
        layer = next(copies[0].iterdir())
        assert (layer / "bin" / "busybox").stat().st_uid == subids
        # the shared layers on disk keep host root as owner
        assert (hutch.root / "layers" / layer.name / "bin" / "busybox").stat().st_uid == 0
        mappings = json.loads(hutch.ok("inspect", "a"))[0]["HostConfig"]["IDMappings"]
        assert mappings == {
            "UidMap": [f"0:{subids}:262144"],
            "GidMap": [f"0:{subids}:262144"],
            "Layers": "copy",
        }
        hutch.ok("rm", "-f", "a")
        assert copies[0].is_dir()  # b still uses it
        hutch.ok("rm", "-f", "b")
        assert not copies[0].exists()
        out = hutch.ok("run", "--rm", "--userns=auto:size=70000", busybox, "stat", "-c", "%u", "/bin")
        assert out == "0\n"
        assert [p for p in shifted.iterdir() if not p.name.endswith(".lock")] == []
    finally:
        hutch("rm", "-f", "a", "b")


def test_concurrent_auto_creates_get_disjoint_blocks(hutch, busybox, subids):
    import concurrent.futures

    names = [f"c{i}" for i in range(6)]
    try:
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            results = list(
                pool.map(
                    lambda n: hutch("create", "--name", n, "--userns=auto:size=1000", busybox, "true"),
                    names,
                )
            )
        assert all(r.code == 0 for r in results), [r.err for r in results]
        starts = set()
        for name in names:
            mappings = json.loads(hutch.ok("inspect", name))[0]["HostConfig"]["IDMappings"]
            starts.add(mappings["UidMap"][0])
        assert len(starts) == len(names)
    finally:
        hutch("rm", "-f", *names)
