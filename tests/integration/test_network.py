"""Container networking with real traffic: bridges, names on user networks, published ports (TCP and
UDP, from the host's 127.0.0.1 and from another namespace), teardown on every path, bad input.

Traffic only ever goes to addresses these tests or hutch create (see network_fixtures).
"""

# ruff: noqa: F811 - the fixtures imported from network_fixtures are test parameters of the same name

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from network_fixtures import (  # noqa: F401 - net and other_host are fixtures
    free_port,
    host_addresses,
    host_links,
    net,
    nft_elements,
    other_host,
    wait_until,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables"),
]
DATA = Path(__file__).resolve().parent.parent / "data"
RETRY = "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O- {url} && break; sleep 0.2; done"
SERVE = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"


def _http(url: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_bridge_gives_eth0_and_default_route(net):
    out = net.ok("run", "--rm", "--network", "bridge", net.image, "sh", "-c", "ip -o -4 addr; ip route")
    assert "eth0" in out and "inet 10." in out
    assert "default via 10." in out
    none = net.ok("run", "--rm", "--network", "none", net.image, "cat", "/proc/net/dev")
    assert [line.split(":")[0].strip() for line in none.splitlines()[2:]] == ["lo"]


def test_user_network_names_and_aliases(net):
    net.ok("network", "create", "apps")
    net.ok(
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "apps",
        "--network-alias",
        "www",
        net.image,
        "sh",
        "-c",
        SERVE,
    )
    for name in ("web", "www"):
        out = net.ok(
            "run", "--rm", "--network", "apps", net.image,
            "sh", "-c", RETRY.format(url=f"http://{name}/"),
        )  # fmt: skip
        assert out.startswith("hello from"), out
    # nc both ways, by name, from a container started after the server
    out = net.ok(
        "run",
        "--rm",
        "--network",
        "apps",
        net.image,
        "sh",
        "-c",
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc web 80",
    )
    assert "hello from" in out
    # a renamed container is found by its new name
    net.ok("rename", "web", "site")
    out = net.ok("run", "--rm", "--network", "apps", net.image, "sh", "-c", RETRY.format(url="http://site/"))
    assert out.startswith("hello from"), out
    # the default bridge has no names, as in Docker
    assert net("run", "--rm", "--network", "bridge", net.image, "ping", "-c1", "-W1", "web").code != 0


def test_published_port_from_localhost_and_another_host(net, other_host):
    port = free_port()
    net.ok(
        "run", "-d", "--name", "web", "--network", "bridge", "-p", f"{port}:80", net.image, "sh", "-c", SERVE
    )
    assert _http(f"http://127.0.0.1:{port}/").startswith("hello from")
    proc = other_host.run("busybox", "wget", "-q", "-O-", f"http://{other_host.host_address}:{port}/")
    assert proc.stdout.startswith("hello from"), proc.stderr
    assert net.ok("port", "web").strip() == f"80/tcp -> 0.0.0.0:{port}"
    assert f"0.0.0.0:{port}->80/tcp" in net.ok("ps")
    inspect = json.loads(net.ok("inspect", "web"))[0]
    assert inspect["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}


def test_hairpin_through_the_host(net):
    """A container reaches a published port through the host's address on the bridge, also its own."""
    port = free_port()
    net.ok("run", "-d", "--name", "web", "-p", f"{port}:80", net.image, "sh", "-c", SERVE)
    bridge = json.loads(net.ok("network", "inspect", "bridge"))[0]
    gateway = bridge["IPAM"]["Config"][0]["Gateway"]
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
    get = f"for i in 1 2 3 4 5; do {request} | nc -w 2 {gateway} {port} && break; done"
    assert "hello from" in net.ok("run", "--rm", net.image, "sh", "-c", get)
    assert "hello from" in net.ok("exec", "web", "sh", "-c", get)


def _image_exposing(net, tmp_path, name: str, ports: list[str]) -> None:
    """busybox re-tagged as ``name`` with EXPOSE ``ports``: saved, its config edited, loaded back."""
    import hashlib
    import io
    import tarfile

    saved = tmp_path / "saved.tar"
    net.ok("save", "-o", str(saved), net.image)
    out = io.BytesIO()
    with tarfile.open(saved) as src, tarfile.open(fileobj=out, mode="w") as dst:
        manifest = json.loads(src.extractfile("manifest.json").read())
        config = json.loads(src.extractfile(manifest[0]["Config"]).read())
        config["config"]["ExposedPorts"] = {port: {} for port in ports}
        data = json.dumps(config).encode()
        new_name = hashlib.sha256(data).hexdigest() + ".json"
        for member in src.getmembers():
            if member.name in ("manifest.json", manifest[0]["Config"], "repositories"):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        manifest[0].update(Config=new_name, RepoTags=[f"{name}:latest"])
        for entry_name, payload in ((new_name, data), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(entry_name)
            info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload))
    edited = tmp_path / "edited.tar"
    edited.write_bytes(out.getvalue())
    net.ok("load", "-i", str(edited))


def test_publish_all_uses_the_images_expose(net, tmp_path):
    _image_exposing(net, tmp_path, "exposing", ["80/tcp", "5353/udp"])
    net.ok("run", "-d", "--name", "web", "-P", "exposing", "sh", "-c", SERVE)
    lines = dict(line.split(" -> ") for line in net.ok("port", "web").splitlines())
    assert set(lines) == {"80/tcp", "5353/udp"}
    port = int(lines["80/tcp"].rpartition(":")[2])
    assert _http(f"http://127.0.0.1:{port}/").startswith("hello from")


def test_random_host_port_and_host_ip(net, other_host):
    net.ok(
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "bridge",
        "-p",
        "127.0.0.1::80",
        net.image,
        "sh",
        "-c",
        SERVE,
    )
    line = net.ok("port", "web", "80").strip()
    host, _, port = line.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 1024
    assert _http(f"http://127.0.0.1:{port}/").startswith("hello from")
    # bound to 127.0.0.1 only: not published on the host's other addresses
    proc = other_host.run("busybox", "wget", "-q", "-O-", f"http://{other_host.host_address}:{port}/")
    assert proc.returncode != 0


def test_udp_published_port(net, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    binary = tmp_path / "bin" / "udp_echo"
    binary.parent.mkdir()
    subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(DATA / "udp_echo.c")], check=True)
    port = free_port(socket.SOCK_DGRAM)
    net.ok(
        "run", "-d", "--name", "udp", "--network", "bridge", "-p", f"{port}:5353/udp",
        "-v", f"{binary.parent}:/probe:ro", net.image, "/probe/udp_echo", "5353",
    )  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        for _ in range(30):  # the server may not be bound yet: retry
            s.sendto(b"ping", ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(100)
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("no UDP answer through the published port")
    assert data == b"echo:ping"


def test_concurrent_starts_get_distinct_addresses(net):
    """Separate hutch processes at once on a small network: each address is handed out once."""
    net.ok("network", "create", "--subnet", "10.93.8.0/29", "small")  # 5 host addresses after the gateway
    procs = [
        subprocess.Popen(
            net.hutch.argv("run", "-d", "--name", f"c{i}", "--network", "small", net.image, "sleep", "30"),
            env=net.hutch.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(5)
    ]
    for proc in procs:
        assert proc.wait(60) == 0, proc.stderr.read()
    inspected = json.loads(net.ok("inspect", *[f"c{i}" for i in range(5)]))
    addresses = [c["NetworkSettings"]["Networks"]["small"]["IPAddress"] for c in inspected]
    assert sorted(addresses) == [f"10.93.8.{n}" for n in range(2, 7)]
    result = net("run", "--rm", "--network", "small", net.image, "true")
    assert result.code == 125 and "no free address" in result.err


def test_networks_are_isolated_from_each_other(net):
    net.ok("network", "create", "front")
    net.ok("network", "create", "back")
    net.ok("network", "create", "--internal", "vault")
    net.ok("run", "-d", "--name", "web", "--network", "back", net.image, "sh", "-c", SERVE)
    info = json.loads(net.ok("inspect", "web"))[0]
    address = info["NetworkSettings"]["Networks"]["back"]["IPAddress"]
    fetch = RETRY.format(url=f"http://{address}/")
    assert net.ok("run", "--rm", "--network", "back", net.image, "sh", "-c", fetch).startswith("hello from")
    # routed through the host from another hutch network: dropped, as between Docker networks
    get = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {address} 80"
    out = net("run", "--rm", "--network", "front", net.image, "sh", "-c", get)
    assert "hello" not in out.out
    # an --internal network has no default route out
    routes = net.ok("run", "--rm", "--network", "vault", net.image, "ip", "route")
    assert "default" not in routes


@pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="needs iptables")
def test_iptables_fallback(net):
    """HUTCH_FIREWALL=iptables takes the path used when nft is missing: the same ports, in chains."""
    net.hutch.env["HUTCH_FIREWALL"] = "iptables"
    port = free_port()
    net.ok("run", "-d", "--name", "web", "-p", f"{port}:80", net.image, "sh", "-c", SERVE)
    assert _http(f"http://127.0.0.1:{port}/").startswith("hello from")
    chain = net.table.upper() + "-PORTS"
    rules = subprocess.run(["iptables", "-t", "nat", "-S", chain], capture_output=True, text=True).stdout
    assert f"--dport {port} -j DNAT" in rules
    assert subprocess.run(["nft", "list", "table", "ip", net.table], capture_output=True).returncode != 0
    net.ok("kill", "web")
    net.ok("wait", "web")
    net.ok("rm", "web")
    rules = subprocess.run(["iptables", "-t", "nat", "-S", chain], capture_output=True, text=True).stdout
    assert f"--dport {port}" not in rules
    net.manager().teardown()
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert net.table.upper() not in saved


def test_static_ip_mac_dns_add_host(net):
    net.ok("network", "create", "--subnet", "10.93.7.0/24", "fixed")
    out = net.ok(
        "run", "--rm", "--network", "fixed", "--ip", "10.93.7.50", "--mac-address", "02:00:00:aa:bb:cc",
        "--dns", "10.93.7.1", "--add-host", "db:10.93.7.9", net.image,
        "sh", "-c", "ip -o addr show eth0; ip -o link show eth0; cat /etc/resolv.conf /etc/hosts",
    )  # fmt: skip
    assert "inet 10.93.7.50/24" in out
    assert "02:00:00:aa:bb:cc" in out
    assert "nameserver 10.93.7.1" in out
    assert "10.93.7.9\tdb" in out


def test_container_network_mode_shares_the_namespace(net):
    net.ok("run", "-d", "--name", "web", "--network", "bridge", net.image, "sh", "-c", SERVE)
    out = net.ok(
        "run", "--rm", "--network", "container:web", net.image,
        "sh", "-c", RETRY.format(url="http://127.0.0.1/"),
    )  # fmt: skip
    assert out.startswith("hello from")


def test_connect_and_disconnect(net):
    net.ok("network", "create", "extra")
    net.ok("run", "-d", "--name", "box", "--network", "bridge", net.image, "sleep", "60")
    net.ok("network", "connect", "--alias", "boxy", "extra", "box")
    assert "eth1" in net.ok("exec", "box", "ip", "-o", "-4", "addr")
    net.ok("run", "--rm", "--network", "extra", net.image, "ping", "-c1", "-W2", "boxy")
    assert net("network", "rm", "extra").code != 0  # still in use
    net.ok("network", "disconnect", "extra", "box")
    assert "eth1" not in net.ok("exec", "box", "ip", "-o", "-4", "addr")
    net.ok("network", "rm", "extra")


def test_bridge_and_rules_come_back_after_a_reboot(net):
    """A reboot loses the bridge and the nft table but not the database: the next run makes both again,
    with the same subnet, and published ports work."""
    net.ok("run", "--rm", net.image, "true")
    before = json.loads(net.ok("network", "inspect", "bridge"))[0]
    bridge = before["Options"]["com.docker.network.bridge.name"]
    subprocess.run(["ip", "link", "del", bridge], check=True)
    subprocess.run(["nft", "delete", "table", "ip", net.table], check=True)
    port = free_port()
    net.ok("run", "-d", "--name", "web", "-p", f"{port}:80", net.image, "sh", "-c", SERVE)
    assert _http(f"http://127.0.0.1:{port}/").startswith("hello from")
    after = json.loads(net.ok("network", "inspect", "bridge"))[0]
    assert after["IPAM"] == before["IPAM"]
    # the table flushed under a running container: the next change rebuilds it from the database
    subprocess.run(["nft", "delete", "table", "ip", net.table], check=True)
    port2 = free_port()
    net.ok("run", "-d", "--name", "web2", "-p", f"{port2}:80", net.image, "sh", "-c", SERVE)
    assert _http(f"http://127.0.0.1:{port2}/").startswith("hello from")
    assert _http(f"http://127.0.0.1:{port}/").startswith("hello from")


def test_crash_of_hutch_is_reconciled(net):
    """Kill the monitor and the container: the next command releases the lease, port and nft element."""
    port = free_port()
    net.ok(
        "run", "-d", "--name", "doomed", "--network", "bridge", "-p", f"{port}:80", net.image, "sleep", "60"
    )
    table = net.table
    assert nft_elements(table) > 0
    info = json.loads(net.ok("inspect", "doomed"))[0]
    pid = info["State"]["Pid"]
    monitor = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])  # noqa: SIM115
    os.kill(monitor, 9)
    os.kill(pid, 9)
    assert wait_until(lambda: "Exited" in net.ok("ps", "-a"))
    net.ok("system", "prune", "-f")
    assert net.manager().ipam.all_endpoints() == []
    assert net.manager().ports.all() == []
    ports_left = subprocess.run(
        ["nft", "list", "map", "ip", table, "ports_any"], capture_output=True, text=True
    )
    assert str(port) not in ports_left.stdout


def test_twenty_containers_leak_nothing(net):
    net.ok("run", "--rm", "--network", "bridge", net.image, "true")  # makes the bridge and the table
    table = net.table
    links, addresses, elements = host_links(), host_addresses(), nft_elements(table)
    for i in range(20):
        if i % 2:
            net.ok("run", "--rm", "--network", "bridge", "-p", "80", net.image, "true")
        else:
            net.ok(
                "run",
                "-d",
                "--name",
                f"c{i}",
                "--network",
                "bridge",
                "-p",
                "80",
                "-p",
                "53/udp",
                net.image,
                "sleep",
                "30",
            )
            net.ok("kill", f"c{i}")
            net.ok("wait", f"c{i}")
            net.ok("rm", f"c{i}")
    # 30 s: the kernel destroys namespaces (and their veths) from a workqueue that lags on a loaded host
    assert wait_until(lambda: host_links() == links, timeout=30), sorted(host_links() ^ links)
    assert wait_until(lambda: host_addresses() == addresses)
    assert nft_elements(table) == elements
    assert net.manager().ipam.all_endpoints() == []


def _nothing_made(net) -> None:
    assert net.ok("ps", "-aq") == ""
    assert net.manager().ipam.all_endpoints() == []
    assert net.manager().ports.all() == []


def test_bad_input_is_refused_before_anything_starts(net):
    links = host_links()
    for args, message in [
        (["-p", "70000:80"], "invalid port '70000'"),
        (["-p", "80/sctp"], "invalid protocol"),
        (["--network", "nosuch"], "network nosuch not found"),
        (["--ip", "10.1.2.300", "--network", "bridge"], "invalid --ip"),
        (["--network", "none", "-p", "80"], "cannot be published"),
    ]:
        result = net("run", "--rm", *args, net.image, "true")
        assert result.code == 125, (args, result.err)
        assert message in result.err, (args, result.err)
        assert len(result.err.strip().splitlines()) == 1
    _nothing_made(net)
    assert host_links() == links


def test_port_already_taken(net):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = net("run", "--rm", "--network", "bridge", "-p", f"127.0.0.1:{port}:80", net.image, "true")
        assert result.code == 125 and f"127.0.0.1:{port}/tcp" in result.err and "in use" in result.err
    _nothing_made(net)
    # taken by another hutch container: the first one's reaper holds the port
    port = free_port()
    net.ok(
        "run", "-d", "--name", "first", "--network", "bridge", "-p", f"{port}:80", net.image, "sleep", "30"
    )
    result = net("run", "--rm", "--network", "bridge", "-p", f"{port}:80", net.image, "true")
    assert result.code == 125 and "in use" in result.err
    assert len(net.manager().ports.all()) == 1


def test_overlapping_subnets_are_refused(net):
    net.ok("network", "create", "--subnet", "10.94.1.0/24", "one")
    for subnet in ("10.94.1.128/25", "10.94.0.0/16", "127.0.0.0/16"):
        result = net("network", "create", "--subnet", subnet, "two")
        assert result.code == 125 and "overlaps" in result.err, result.err
    assert "two" not in net.ok("network", "ls")
    assert net("network", "create", "one").code == 125


def test_restart_policy_keeps_a_fixed_published_port(net):
    """The restarted container binds its host port again: the finisher must not still hold the old
    socket the monitor passed on (it did: the restart exited 125)."""
    port = free_port()
    net.ok(
        "run", "-d", "--name", "flaky", "--restart", "on-failure:2", "-p", f"{port}:80", net.image,
        "sh", "-c", "echo run; sleep 0.3; exit 3",
    )  # fmt: skip
    assert wait_until(lambda: net.ok("logs", "flaky").count("run") == 3 and "Exited" in net.ok("ps", "-a"))
    state = json.loads(net.ok("inspect", "flaky"))[0]
    assert (state["RestartCount"], state["State"]["ExitCode"]) == (2, 3)
    assert net.manager().ports.all() == []
