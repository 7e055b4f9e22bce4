"""Published ports: ``-p``/``-P`` parsing, the ``ports`` table, and holding the host port while in use.

A published port is an nftables DNAT element (``nat``), which by itself would not stop a host program
from binding the same port later and silently losing its traffic to the container. So the process that
reaps the container (``hutch run`` in the foreground, or the detached monitor) also holds a bound socket on
the host port for the container's lifetime: the kernel then refuses the port to anyone else, and
``-p 0`` (``-p CTRPORT``) gets a free port from the kernel's ephemeral range. The socket never listens, and
DNAT happens before the socket lookup, so it never sees a packet. The ``ports`` table makes the claim
visible to other hutch processes (``hutch port``) and lets a crashed owner's elements be removed.
"""

from __future__ import annotations

from hutch.db import Database
from hutch.errors import Conflict, InvalidArgument
from hutch.network.nat import Port

_DDL = """
CREATE TABLE IF NOT EXISTS ports (
    proto TEXT NOT NULL,
    host_ip TEXT NOT NULL,             -- '' for every address of the host
    host_port INTEGER NOT NULL,
    container TEXT NOT NULL,
    address TEXT NOT NULL,
    container_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port)
);
"""


def _port(text: str, spec: str, allow_zero: bool = False) -> int:
    if not text.isdigit() or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise InvalidArgument(f"invalid port {text!r} in {spec!r}: ports are 1-65535")
    return int(text)


def parse_publish(spec: str) -> dict:
    """``[HOSTIP:][HOSTPORT:]CTRPORT[/tcp|udp]``; a missing or empty host port means a free one."""
    from hutch.network.ipam import ip_to_int

    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidArgument(f"invalid protocol {proto!r} in {spec!r}: tcp or udp")
    parts = body.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise InvalidArgument(f"invalid port specification {spec!r}: expected [HOSTIP:][HOSTPORT:]CTRPORT")
    if any("-" in p for p in parts[-2:]):
        raise InvalidArgument(f"port ranges are not supported yet: {spec!r}")
    host_ip = parts[0] if len(parts) == 3 else ""
    if host_ip in ("0.0.0.0", ""):
        host_ip = ""
    else:
        try:
            ip_to_int(host_ip)
        except ValueError:
            raise InvalidArgument(f"invalid host address {host_ip!r} in {spec!r}")
    host_port = _port(parts[-2], spec) if len(parts) >= 2 and parts[-2] else 0
    return {
        "proto": proto,
        "host_ip": host_ip,
        "host_port": host_port,
        "container_port": _port(parts[-1], spec),
    }


def exposed_ports(image_config: dict) -> list[dict]:
    """``-P``: every port the image EXPOSEs, each to a free host port."""
    result = []
    for key in sorted(image_config.get("ExposedPorts") or {}):
        number, _, proto = key.partition("/")
        result.append(parse_publish(f"{number}/{proto or 'tcp'}"))
    return result


class PortTable:
    """Claims on host ports, one row per published port of a running container."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema("ports", _DDL)

    def claim(self, container: str, ports: list[Port]) -> None:
        """Record the ports, refusing any that another hutch container holds on an overlapping address."""
        with self.db.transaction() as conn:
            for p in ports:
                row = conn.execute(
                    "SELECT container FROM ports WHERE proto=? AND host_port=? AND (host_ip=? OR host_ip=''"
                    " OR ?='')",
                    (p.proto, p.host_port, p.host_ip, p.host_ip),
                ).fetchone()
                if row is not None:
                    raise Conflict(
                        f"port {p.host_ip or '0.0.0.0'}:{p.host_port}/{p.proto} is already published by"
                        f" container {row[0][:12]}"
                    )
                conn.execute(
                    "INSERT INTO ports VALUES (?,?,?,?,?,?)",
                    (p.proto, p.host_ip, p.host_port, container, p.address, p.container_port),
                )

    def of(self, container: str) -> list[Port]:
        rows = self.db.conn.execute("SELECT * FROM ports WHERE container=?", (container,)).fetchall()
        return [_row_port(r) for r in rows]

    def all(self) -> list[tuple[str, Port]]:
        return [(r["container"], _row_port(r)) for r in self.db.conn.execute("SELECT * FROM ports")]

    def release(self, container: str) -> list[Port]:
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT * FROM ports WHERE container=?", (container,)).fetchall()
            conn.execute("DELETE FROM ports WHERE container=?", (container,))
        return [_row_port(r) for r in rows]


def _row_port(row) -> Port:
    return Port(row["proto"], row["host_ip"], row["host_port"], row["address"], row["container_port"])


def reserve(wanted: list[dict]) -> list[tuple[dict, object]]:
    """Bind a socket on each host port (port 0: the kernel picks one); fails, with everything closed,
    if any is taken. Returns (request with the real host port, socket to hold) pairs."""
    import socket

    held: list[tuple[dict, object]] = []
    try:
        for item in wanted:
            kind = socket.SOCK_STREAM if item["proto"] == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
            try:
                sock.bind((item["host_ip"] or "0.0.0.0", item["host_port"]))
            except OSError as err:
                sock.close()
                where = f"{item['host_ip'] or '0.0.0.0'}:{item['host_port']}/{item['proto']}"
                raise Conflict(f"cannot publish port {where}: {err.strerror}")
            held.append((dict(item, host_port=sock.getsockname()[1]), sock))
    except BaseException:
        for _, sock in held:
            sock.close()
        raise
    return held


def check_free(wanted: list[dict]) -> None:
    """At create time: fail early (before anything exists) if a fixed host port is already taken."""
    for _, sock in reserve([w for w in wanted if w["host_port"]]):
        sock.close()
