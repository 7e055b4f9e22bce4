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


def resolv_conf(host_network: bool, host_file: Path = Path("/etc/resolv.conf")) -> str:
    """The host's resolv.conf; outside the host network, loopback nameservers cannot work and are dropped."""
    try:
        lines = host_file.read_text().splitlines()
    except OSError:
        return ""
    if host_network:
        return "\n".join(lines) + "\n"
    kept = [ln for ln in lines if not _is_loopback_nameserver(ln)]
    return "\n".join(kept) + "\n"


def _is_loopback_nameserver(line: str) -> bool:
    fields = line.split()
    return (
        len(fields) >= 2
        and fields[0] == "nameserver"
        and (fields[1].startswith("127.") or fields[1] == "::1")
    )


def write_etc_files(directory: Path, hostname: str, host_network: bool) -> dict[str, str]:
    """Write the three files; returns container path -> host path for the spec's bind mounts."""
    if host_network:
        try:
            hosts = Path("/etc/hosts").read_text()
        except OSError:
            hosts = _HOSTS
    else:
        hosts = _HOSTS
    files = {
        "/etc/hostname": hostname + "\n",
        "/etc/hosts": hosts,
        "/etc/resolv.conf": resolv_conf(host_network),
    }
    result = {}
    for dest, content in files.items():
        path = directory / dest.rsplit("/", 1)[1]
        path.write_text(content)
        result[dest] = str(path)
    return result
