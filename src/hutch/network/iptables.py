"""The fallback for hosts without the nft CLI: the same rules as ``nat`` in iptables chains of hutch's own.

Per root (``TAG`` = the nft table's name, upper-cased): ``TAG-PORTS`` (nat: DNAT per published port,
jumped to from PREROUTING and OUTPUT for local destinations), ``TAG-POST`` (nat: masquerade) and
``TAG-FWD`` (filter: isolation). Without sets or maps every change rebuilds the chains from the database
in one ``iptables-restore --noflush`` per table (declaring a chain there empties it), so the chains are
always exactly what the database says; only the three jumps from the built-in chains are added one by one,
after checking they are not there yet. ``delete`` removes the jumps and the chains.
"""

from __future__ import annotations

import os
import subprocess

from hutch.errors import HutchError

_JUMPS = [
    ("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL"], "PORTS"),
    ("nat", "OUTPUT", ["-m", "addrtype", "--dst-type", "LOCAL"], "PORTS"),
    ("nat", "POSTROUTING", [], "POST"),
    ("filter", "FORWARD", [], "FWD"),
]


def available() -> bool:
    return _binary("iptables") is not None


def _binary(name: str) -> str | None:
    for directory in ("/usr/sbin", "/sbin", "/usr/bin"):
        if os.path.exists(f"{directory}/{name}"):
            return f"{directory}/{name}"
    return None


def _run(args: list[str], stdin: str | None = None, check: bool = True) -> bool:
    proc = subprocess.run(args, input=stdin.encode() if stdin else None, capture_output=True)
    if check and proc.returncode != 0:
        raise HutchError(f"iptables refused hutch's rules: {proc.stderr.decode(errors='replace').strip()}")
    return proc.returncode == 0


def _chain(table: str, part: str) -> str:
    return f"{table.upper()}-{part}"


def script(table: str, networks: list, ports: list) -> str:
    """The ``iptables-restore --noflush`` input for the nat and filter tables."""
    pre, post, fwd = _chain(table, "PORTS"), _chain(table, "POST"), _chain(table, "FWD")
    nat = [f":{pre} - [0:0]", f":{post} - [0:0]"]
    for p in ports:
        where = ["-d", p.host_ip] if p.host_ip else []
        nat.append(
            " ".join(
                ["-A", pre, *where, "-p", p.proto, "--dport", str(p.host_port), "-j", "DNAT"]
                + ["--to-destination", f"{p.address}:{p.container_port}"]
            )
        )
    filt = [f":{fwd} - [0:0]"]
    for n in networks:
        nat.append(f"-A {post} -s 127.0.0.0/8 -o {n.bridge} -j MASQUERADE")
        nat.append(f"-A {post} -s {n.subnet} -o {n.bridge} -m conntrack --ctstate DNAT -j MASQUERADE")
        if not n.internal:
            nat.append(f"-A {post} -s {n.subnet} ! -o {n.bridge} -j MASQUERADE")
        if n.internal:
            filt.append(f"-A {fwd} -i {n.bridge} ! -o {n.bridge} -j DROP")
            filt.append(f"-A {fwd} -o {n.bridge} ! -i {n.bridge} -j DROP")
        filt.append(f"-A {fwd} -i {n.bridge} -o {n.bridge} -j ACCEPT")
        filt += [f"-A {fwd} -i {n.bridge} -o {prefix}+ -j DROP" for prefix in ("hbr-", "hutch")]
    return "*nat\n" + "\n".join(nat) + "\nCOMMIT\n*filter\n" + "\n".join(filt) + "\nCOMMIT\n"


def sync(table: str, networks: list, ports: list) -> None:
    if not networks:
        delete(table)
        return
    restore = _binary("iptables-restore")
    if restore is None:
        raise HutchError("neither nft nor iptables-restore is installed: bridge networking needs one")
    _run([restore, "--noflush"], script(table, networks, ports))
    iptables = _binary("iptables")
    for kind, builtin, match, part in _JUMPS:
        rule = [builtin, *match, "-j", _chain(table, part)]
        if not _run([iptables, "-t", kind, "-C", *rule], check=False):
            _run([iptables, "-t", kind, "-I", *rule])


def delete(table: str) -> None:
    iptables = _binary("iptables")
    if iptables is None or not _run([iptables, "-t", "nat", "-S", _chain(table, "PORTS")], check=False):
        return
    for kind, builtin, match, part in _JUMPS:
        while _run([iptables, "-t", kind, "-D", builtin, *match, "-j", _chain(table, part)], check=False):
            pass
    for kind, _builtin, _match, part in _JUMPS:
        _run([iptables, "-t", kind, "-F", _chain(table, part)], check=False)
        _run([iptables, "-t", kind, "-X", _chain(table, part)], check=False)
