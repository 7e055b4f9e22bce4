"""The per-container /etc/hosts, /etc/hostname and /etc/resolv.conf, written by the engine and bind-mounted.

They live in the container's directory rather than its upper layer so the engine can rewrite them later
(network changes) without touching the image or the container's own writes.
"""

from __future__ import annotations

import os
from pathlib import Path

_HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


def host_hostname() -> str:
    return os.uname().nodename


def resolv_conf(
    host_network: bool, host_file: Path = Path("/etc/resolv.conf"), dns: list[str] | None = None
) -> str:
    """The host's resolv.conf; outside the host network, loopback nameservers cannot work and are dropped.
    ``--dns`` servers replace the host's nameservers (its search and options lines are kept)."""
    try:
        lines = host_file.read_text().splitlines()
    except OSError:
        lines = []
    if host_network and not dns:
        return "\n".join(lines) + "\n" if lines else ""
    kept = [ln for ln in lines if not _is_loopback_nameserver(ln)]
    if dns:
        kept = [ln for ln in kept if ln.split()[:1] != ["nameserver"]]
        kept += [f"nameserver {server}" for server in dns]
    return "\n".join(kept) + "\n" if kept else ""


def _is_loopback_nameserver(line: str) -> bool:
    fields = line.split()
    return (
        len(fields) >= 2
        and fields[0] == "nameserver"
        and (fields[1].startswith("127.") or fields[1] == "::1")
    )


def write_etc_files(
    directory: Path,
    hostname: str,
    host_network: bool,
    extra_hosts: list[str] | None = None,
    dns: list[str] | None = None,
) -> dict[str, str]:
    """Write the three files; returns container path -> host path for the spec's bind mounts.
    ``extra_hosts`` are ``--add-host`` lines; the network layer adds the container's own address at start."""
    if host_network:
        try:
            hosts = Path("/etc/hosts").read_text()
        except OSError:
            hosts = _HOSTS
    else:
        hosts = _HOSTS
    if extra_hosts:
        hosts += "".join(line + "\n" for line in extra_hosts)
    files = {
        "/etc/hostname": hostname + "\n",
        "/etc/hosts": hosts,
        "/etc/resolv.conf": resolv_conf(host_network, dns=dns),
    }
    result = {}
    for dest, content in files.items():
        path = directory / dest.rsplit("/", 1)[1]
        path.write_text(content)
        result[dest] = str(path)
    return result
