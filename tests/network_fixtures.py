"""Fixtures for the network tests: a hutch root whose networks are torn down and checked on every path,
and a second network namespace that plays "another host" on a veth pair the fixture owns.

Only addresses the tests create are ever used: hutch's own bridges, 127.0.0.1, and the /30 between the
host and the test namespace.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

LINK_PREFIXES = ("vh", "hbr-", "hutch")


def host_links() -> set[str]:
    return {n for n in os.listdir("/sys/class/net") if n.startswith(LINK_PREFIXES)}


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[1] + " " + line.split()[3] for line in out.splitlines())


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.startswith("table ip hutch")}


def nft_elements(table: str) -> int:
    """How many elements the table's sets and maps hold (ports, subnets, bridges)."""
    proc = subprocess.run(["nft", "-j", "list", "table", "ip", table], capture_output=True, text=True)
    if proc.returncode != 0:
        return 0
    count = 0
    for item in json.loads(proc.stdout)["nftables"]:
        for kind in ("set", "map"):
            if kind in item:
                count += len(item[kind].get("elem", []))
    return count


def wait_until(check, timeout: float = 10.0) -> bool:
    """Poll ``check``: a namespace (and so its veth) is destroyed by the kernel asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NetHutch:
    """The ``hutch`` runner plus what the network tests need to look at."""

    def __init__(self, hutch, image: str) -> None:
        self.hutch = hutch
        self.image = image
        self.root: Path = hutch.root

    def __call__(self, *args, **kw):
        return self.hutch(*args, **kw)

    def ok(self, *args, **kw) -> str:
        return self.hutch.ok(*args, **kw)

    def manager(self):
        from hutch.db import Database
        from hutch.network.manager import NetworkManager

        return NetworkManager(self.root, Database(self.root / "hutch.db"))

    @property
    def table(self) -> str:
        return self.manager().table

    def remove_all(self) -> None:
        """kill + wait + rm for every container (``rm -f`` races the monitor's own cgroup removal)."""
        ids = self.hutch("ps", "-aq", "--no-trunc").out.split()
        for cid in ids:
            self.hutch("kill", cid)
        for cid in ids:
            self.hutch("wait", cid, timeout=30)
            if self.hutch("rm", cid).code != 0:
                self.hutch("rm", "-f", cid)


@pytest.fixture
def net(hutch, busybox):
    """A hutch root with busybox; afterwards every container, bridge and the nft table go, and the test
    fails if any hutch link or table it caused is still there."""
    links_before = host_links()
    tables_before = nft_tables()
    helper = NetHutch(hutch, busybox)
    yield helper
    problems = []
    try:
        helper.remove_all()
    finally:
        if (hutch.root / "hutch.db").exists():
            helper.manager().teardown()
    if not wait_until(lambda: host_links() <= links_before):
        problems.append(f"links left: {sorted(host_links() - links_before)}")
        for name in host_links() - links_before:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    extra_tables = nft_tables() - tables_before
    if extra_tables:
        problems.append(f"nft tables left: {sorted(extra_tables)}")
        for table in extra_tables:
            subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)
    assert not problems, "; ".join(problems)


class OtherHost:
    """A network namespace joined to the host by a veth pair: ``address`` is its own, ``host_address``
    the host's end (a local address of the host, so published ports answer there)."""

    def __init__(self, name: str, subnet_byte: int) -> None:
        self.name = name
        self.host_link = f"hxh{subnet_byte}"
        self.host_address = f"10.251.{subnet_byte}.1"
        self.address = f"10.251.{subnet_byte}.2"

    def run(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture
def other_host():
    n = os.getpid() % 200 + 20
    host = OtherHost(f"hutch-test-{os.getpid()}", n)

    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    try:
        sh("ip", "netns", "add", host.name)
        sh("ip", "link", "add", host.host_link, "type", "veth", "peer", "name", "eth0", "netns", host.name)
        sh("ip", "addr", "add", f"{host.host_address}/30", "dev", host.host_link)
        sh("ip", "link", "set", host.host_link, "up")
        sh("ip", "-n", host.name, "addr", "add", f"{host.address}/30", "dev", "eth0")
        sh("ip", "-n", host.name, "link", "set", "eth0", "up")
        sh("ip", "-n", host.name, "link", "set", "lo", "up")
        yield host
    finally:
        subprocess.run(["ip", "netns", "del", host.name], capture_output=True)
        subprocess.run(["ip", "link", "del", host.host_link], capture_output=True)
