"""``--isolation vm`` on hutch's bridges: a microVM's card is a TAP device on the network's bridge.

Real traffic, under TCG: the guest reaches a server this test runs on the bridge's own address, a
namespace container on the same user network reaches the guest by name, a published port on 127.0.0.1
reaches busybox httpd inside the guest. Afterwards (the ``net`` fixture, on every path): no TAP, veth,
bridge or nft table left, and no QEMU process. Traffic only goes to the bridges these tests make and to
127.0.0.1.
"""

# ruff: noqa: F811 - the fixtures imported from network_fixtures are test parameters of the same name

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import threading
import time
import urllib.request

import pytest

from network_fixtures import free_port, host_links, net, nft_elements, wait_until  # noqa: F401

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables"),
]

VM = ("--isolation", "vm", "--vm-accel", "tcg")
SERVE = (
    "mkdir -p /www && echo hello from the vm > /www/index.html"
    " && (wget -q -O /www/fromhost {url} || echo wget failed > /www/fromhost)"
    " && exec httpd -f -p 80 -h /www"
)


def _qemu_pids(root) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError):
            continue
        if cmd.startswith(b"qemu-system") and str(root).encode() in cmd:
            found.append(int(entry))
    return found


def _http(url: str, timeout: float = 60.0) -> str:
    """GET with retries: a detached guest's httpd starts a little after ``run -d`` returns (TCG)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class _HostServer:
    """A tiny HTTP server on one address (the bridge's gateway), answering a token for any path."""

    def __init__(self, address: str, token: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                body = token.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _taps() -> set[str]:
    """hutch's links that are TAP devices (a TAP has /sys/class/net/NAME/tun_flags)."""
    return {n for n in host_links() if os.path.exists(f"/sys/class/net/{n}/tun_flags")}


def test_vm_on_a_user_network(net):
    net.ok("network", "create", "vmnet")
    gateway = json.loads(net.ok("network", "inspect", "vmnet"))[0]["IPAM"]["Config"][0]["Gateway"]
    server = _HostServer(gateway, "token from the host")
    port = free_port()
    try:
        cid = net.ok(
            "run", "-d", "--name", "vmbox", "--network", "vmnet", "-p", f"127.0.0.1:{port}:80", *VM,
            net.image, "sh", "-c", SERVE.format(url=server.url),
            timeout=180,
        ).strip()  # fmt: skip
        # the card: a TAP named like the container's veths would be, a port of the network's bridge
        taps = _taps()
        assert len(taps) == 1 and next(iter(taps)).startswith(f"vh{cid[:9]}")
        options = json.loads(net.ok("network", "inspect", "vmnet"))[0]["Options"]
        bridge = options["com.docker.network.bridge.name"]
        assert os.path.realpath(f"/sys/class/net/{next(iter(taps))}/master").endswith(f"/{bridge}")
        # -p 127.0.0.1:PORT:80 reaches httpd in the guest
        assert _http(f"http://127.0.0.1:{port}/index.html") == "hello from the vm\n"
        # the guest reached the host's server on the bridge address
        assert _http(f"http://127.0.0.1:{port}/fromhost") == "token from the host"
        # the guest has the address IPAM gave it, and a namespace container finds it by name
        address = json.loads(net.ok("inspect", "vmbox"))[0]["NetworkSettings"]["IPAddress"]
        out = net.ok(
            "run", "--rm", "--network", "vmnet", net.image,
            "sh", "-c", "grep -w vmbox /etc/hosts; wget -q -O- http://vmbox/index.html",
        )  # fmt: skip
        assert out.split()[0] == address and out.endswith("hello from the vm\n"), out
        # a second guest (another clone of the same template) reaches the first by name: each clone has
        # its own MAC (QEMU restores the template's; the guest sets its own), or the bridge could not
        # tell them apart
        mac = json.loads(net.ok("inspect", "vmbox"))[0]["NetworkSettings"]["MacAddress"]
        out = net.ok(
            "run", "--rm", "--network", "vmnet", *VM, net.image,
            "sh", "-c", "cat /sys/class/net/eth0/address; wget -q -O- http://vmbox/index.html",
            timeout=180,
        )  # fmt: skip
        own_mac, fetched = out.split("\n", 1)
        assert own_mac.startswith("02:42:") and own_mac != mac and fetched == "hello from the vm\n", out
        assert f"127.0.0.1:{port}->80/tcp" in net.ok("ps")
        # stats counts the guest's traffic (its TAP's), not the host's
        received, _, sent = net.ok("stats", "--no-stream", "--format", "{{.NetIO}}", "vmbox").split()[:3]
        assert received != "0B" and sent != "0B", (received, sent)
        net.ok("stop", "-t", "5", "vmbox", timeout=60)
        assert wait_until(lambda: not _taps())  # the TAP went with QEMU
        assert _qemu_pids(net.root) == []
        assert net.manager().ipam.all_endpoints() == [] and net.manager().ports.all() == []
        net.ok("rm", "vmbox")
    finally:
        server.close()


def test_vm_default_bridge_none_and_a_killed_supervisor(net):
    # default network (bridge), cold boot: eth0 with an address and a default route
    out = net.ok(
        "run", "--rm", *VM, "--vm-template", "off", net.image,
        "sh", "-c", "ip -o -4 addr show eth0; ip route; ping -c1 -W5 $(ip route | awk '/default/{print $3}')",
        timeout=180,
    )  # fmt: skip
    assert "inet 10." in out and "default via 10." in out and "1 packets received" in out, out
    # --network none: only lo, and the driver for a card is not even loaded
    out = net.ok(
        "run", "--rm", "--network", "none", *VM, net.image,
        "sh", "-c", "cat /proc/net/dev; echo --; cat /proc/modules",
        timeout=180,
    )  # fmt: skip
    devices, modules = out.split("--\n")
    assert [line.split(":")[0].strip() for line in devices.splitlines()[2:]] == ["lo"], out
    assert "overlay" in modules and "virtio_net" not in modules
    # kill -9 of the supervisor: QEMU dies with it (PDEATHSIG), the TAP with QEMU, the lease and the
    # published port with the container
    port = free_port()
    net.ok("run", "-d", "--name", "doomed", "-p", f"127.0.0.1:{port}:80", *VM, net.image, "sleep", "600",
           timeout=180)  # fmt: skip
    assert len(_taps()) == 1 and nft_elements(net.table) > 0
    os.kill(json.loads(net.ok("inspect", "doomed"))[0]["State"]["Pid"], signal.SIGKILL)
    assert wait_until(lambda: "Exited" in net.ok("ps", "-a"), timeout=30)
    assert wait_until(lambda: not _taps() and not _qemu_pids(net.root), timeout=30)
    assert net.manager().ipam.all_endpoints() == [] and net.manager().ports.all() == []
    # host and container: networks cannot be a guest's
    for mode in ("host", "container:doomed"):
        refused = net("run", "--rm", "--network", mode, *VM, net.image, "true")
        assert refused.code == 125 and f"--network {mode} with --isolation vm" in refused.err, refused.err
    net.ok("rm", "doomed")


def _guest_hosts_names(net, name: str) -> list[list[str]]:
    return [line.split() for line in net.ok("exec", name, "cat", "/etc/hosts").splitlines()]


def test_vm_hosts_file_follows_peers_that_join_and_leave(net):
    net.ok("network", "create", "hostsnet")
    net.ok(
        "run", "-d", "--name", "vmh", "--network", "hostsnet", *VM, net.image, "sleep", "1000", timeout=180
    )
    assert not any("peer1" in line for line in _guest_hosts_names(net, "vmh"))
    net.ok("run", "-d", "--name", "peer1", "--network", "hostsnet", net.image, "sleep", "1000")
    address = json.loads(net.ok("inspect", "peer1"))[0]["NetworkSettings"]["IPAddress"]
    started = time.monotonic()
    assert wait_until(lambda: [address, "peer1"] in [x[:2] for x in _guest_hosts_names(net, "vmh")], 5)
    joined_after = time.monotonic() - started
    assert net("exec", "vmh", "ping", "-c", "1", "-W", "5", "peer1", timeout=30).code == 0  # by name
    net.ok("rm", "-f", "peer1", timeout=60)
    assert wait_until(lambda: not any("peer1" in x for x in _guest_hosts_names(net, "vmh")), 5)
    assert joined_after < 5
    own = json.loads(net.ok("inspect", "vmh"))[0]["NetworkSettings"]["IPAddress"]
    assert any(x[:1] == [own] for x in _guest_hosts_names(net, "vmh"))  # its own entry stays
