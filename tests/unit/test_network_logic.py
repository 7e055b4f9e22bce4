"""Pure logic of the network layer: -p parsing, subnets, IPAM leases (SQLite in a temp dir), nft text."""

from __future__ import annotations

import pytest

from hutch.db import Database
from hutch.engine.options import parse_add_host, parse_mac
from hutch.errors import Conflict, InvalidArgument
from hutch.network import nat
from hutch.network.ipam import Ipam, int_to_ip, ip_to_int, mac_for
from hutch.network.manager import overlaps, parse_subnet
from hutch.network.ports import exposed_ports, parse_publish


def test_publish_forms():
    full = parse_publish("8080:80")
    assert full == {"proto": "tcp", "host_ip": "", "host_port": 8080, "container_port": 80}
    assert parse_publish("80") == {"proto": "tcp", "host_ip": "", "host_port": 0, "container_port": 80}
    assert parse_publish("127.0.0.1:5353:53/udp") == {
        "proto": "udp",
        "host_ip": "127.0.0.1",
        "host_port": 5353,
        "container_port": 53,
    }
    assert parse_publish("127.0.0.1::80")["host_port"] == 0
    assert parse_publish("0.0.0.0:81:80")["host_ip"] == ""


@pytest.mark.parametrize(
    "bad, message",
    [
        ("70000:80", "70000"),
        ("80:0", "'0'"),
        ("80/sctp", "sctp"),
        ("1.2.3:80:80", "host address"),
        ("a:b:c:d", "expected"),
        ("8000-8001:80", "ranges"),
        ("", "expected"),
    ],
)
def test_publish_rejects(bad, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_publish(bad)


def test_exposed_ports():
    ports = exposed_ports({"ExposedPorts": {"80/tcp": {}, "53/udp": {}}})
    got = [(p["container_port"], p["proto"], p["host_port"]) for p in ports]
    assert got == [(53, "udp", 0), (80, "tcp", 0)]


def test_addresses_and_subnets():
    assert int_to_ip(ip_to_int("10.66.1.2")) == "10.66.1.2"
    with pytest.raises(ValueError):
        ip_to_int("10.66.1.256")
    with pytest.raises(ValueError):
        ip_to_int("010.1.1.1")
    assert mac_for("10.66.0.2") == "02:42:0a:42:00:02"
    assert parse_subnet("10.80.3.0/24") == (ip_to_int("10.80.3.0"), 24)
    for bad in ("10.80.3.1/24", "10.80.3.0", "10.80.3.0/31", "nope/24"):
        with pytest.raises(InvalidArgument):
            parse_subnet(bad)
    assert overlaps(parse_subnet("10.0.0.0/8"), parse_subnet("10.80.3.0/24"))
    assert not overlaps(parse_subnet("10.80.3.0/24"), parse_subnet("10.80.4.0/24"))


def test_run_flags():
    assert parse_add_host("db:10.1.2.3") == "10.1.2.3\tdb"
    assert parse_add_host("db=10.1.2.3") == "10.1.2.3\tdb"
    with pytest.raises(InvalidArgument):
        parse_add_host("db:nowhere")
    assert parse_mac("02:AB:00:00:00:01") == "02:ab:00:00:00:01"
    with pytest.raises(InvalidArgument, match="unicast"):
        parse_mac("01:00:00:00:00:01")


@pytest.fixture
def ipam(tmp_path):
    db = Database(tmp_path / "hutch.db")
    yield Ipam(db)
    db.close()


def test_leases_never_repeat_and_wrap(ipam):
    net = ipam.add_network("n", "a" * 64, "10.80.0.0/29", "10.80.0.1", "hbr-x", False, {})
    got = [ipam.lease(net, f"c{i}", f"c{i}", f"v{i}").address for i in range(5)]
    # .1 is the gateway, .7 the broadcast address
    assert got == ["10.80.0.2", "10.80.0.3", "10.80.0.4", "10.80.0.5", "10.80.0.6"]
    with pytest.raises(Conflict, match="no free address"):
        ipam.lease(net, "c9", "c9", "v9")
    ipam.release("c1")
    assert ipam.lease(net, "c9", "c9", "v9").address == "10.80.0.3"  # the only free one
    with pytest.raises(Conflict, match="already in use"):
        ipam.lease(net, "c10", "c10", "v10", address="10.80.0.2")
    ipam.release("c2")
    ipam.release("c3")
    # round robin: after .3 the cursor moves on, so .5 (released later) is not handed out before .4
    assert ipam.lease(net, "c11", "c11", "v11").address == "10.80.0.4"


def test_static_address_checks(ipam):
    net = ipam.add_network("n", "b" * 64, "10.80.1.0/24", "10.80.1.1", "hbr-y", False, {})
    assert ipam.lease(net, "c", "c", "v", address="10.80.1.77").address == "10.80.1.77"
    for bad in ("10.80.2.5", "10.80.1.0", "10.80.1.255"):
        with pytest.raises(InvalidArgument):
            ipam.lease(net, "d", "d", "w", address=bad)
    with pytest.raises(Conflict, match="gateway"):
        ipam.lease(net, "d", "d", "w", address="10.80.1.1")
    with pytest.raises(Conflict, match="already connected"):
        ipam.lease(net, "c", "c", "v")


def test_nft_script_shape():
    class Net:
        subnet, bridge, internal = "10.80.0.0/24", "hbr-abc", True

    ports = [nat.Port("tcp", "", 8080, "10.80.0.2", 80), nat.Port("udp", "127.0.0.1", 53, "10.80.0.2", 5353)]
    script = nat.table_script("hutch-test", [Net()], ports)
    assert script.startswith("add table ip hutch-test\ndelete table ip hutch-test\n")
    assert "elements = { tcp . 8080 : 10.80.0.2 . 80 }" in script
    assert "elements = { 127.0.0.1 . udp . 53 : 10.80.0.2 . 5353 }" in script
    assert 'set internal { type ifname; elements = { "hbr-abc" }; }' in script


def test_hosts_files_follow_the_network(ipam, tmp_path):
    from hutch.network import dns

    net = ipam.add_network("apps", "c" * 64, "10.80.2.0/24", "10.80.2.1", "hbr-z", False, {})
    paths = {}
    for cid, name in (("a" * 64, "web"), ("b" * 64, "db")):
        path = tmp_path / f"hosts-{name}"
        path.write_text("127.0.0.1\tlocalhost\n10.9.9.9\textra\n")
        paths[name] = path
        aliases = ["store"] if name == "db" else []
        ep = ipam.lease(net, cid, name, f"v{name}", aliases=aliases, hosts_path=str(path))
        dns.add_self(str(path), ep.address, [cid[:12]])
        dns.refresh(ipam, {cid} | dns.neighbours(ipam, cid))
    web = paths["web"].read_text()
    assert web.startswith("127.0.0.1\tlocalhost\n10.9.9.9\textra\n10.80.2.2\taaaaaaaaaaaa\n" + dns.MARKER)
    assert web.endswith(f"10.80.2.3\tdb store {'b' * 12}\n")
    assert paths["db"].read_text().endswith(f"10.80.2.2\tweb {'a' * 12}\n")
    inode = paths["web"].stat().st_ino
    peers = dns.neighbours(ipam, "b" * 64)
    ipam.release("b" * 64)
    dns.refresh(ipam, peers)
    assert paths["web"].read_text().endswith(dns.MARKER)  # db is gone from web's file
    assert paths["web"].stat().st_ino == inode  # rewritten in place: a bind mount pins the inode


def test_iptables_rules_shape():
    from hutch.network import iptables

    class Net:
        subnet, bridge, internal = "10.80.0.0/24", "hbr-abc", False

    script = iptables.script("hutch-x", [Net()], [nat.Port("udp", "127.0.0.1", 53, "10.80.0.2", 5353)])
    assert ":HUTCH-X-PORTS - [0:0]" in script
    assert "-A HUTCH-X-PORTS -d 127.0.0.1 -p udp --dport 53 -j DNAT --to-destination 10.80.0.2:5353" in script
    assert "-A HUTCH-X-POST -s 10.80.0.0/24 ! -o hbr-abc -j MASQUERADE" in script
    assert "-A HUTCH-X-FWD -i hbr-abc -o hbr-+ -j DROP" in script
    assert script.count("COMMIT") == 2


def test_default_pool_falls_back_to_small_subnets_after_the_big_ones():
    from hutch.network.manager import _default_pool

    pool = list(_default_pool())
    assert pool[0] == (ip_to_int("10.66.0.0"), 16) and pool[13] == (ip_to_int("10.79.0.0"), 16)
    assert pool[14] == (ip_to_int("10.200.0.0"), 24) and pool[-1] == (ip_to_int("10.207.255.0"), 24)
    assert len(pool) == 14 + 2048
    assert not any(overlaps(a, b) for i, a in enumerate(pool) for b in pool[i + 1 : i + 40])
