"""``hutch inspect`` for containers, shaped like ``docker inspect`` so existing scripts can read it."""

from __future__ import annotations

from datetime import UTC, datetime

from hutch.engine.records import Record

_ZERO_TIME = "0001-01-01T00:00:00Z"


def _iso(ts: float | None) -> str:
    if not ts:
        return _ZERO_TIME
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _state(record: Record) -> dict:
    live = record.state in ("running", "paused", "restarting")
    return {
        "Status": record.state,
        "Running": live,  # Docker says Running for paused and restarting containers too
        "Paused": record.state == "paused",
        "Restarting": record.state == "restarting",
        "OOMKilled": bool(record.config.get("oom_killed")),
        "Dead": False,
        "Pid": record.pid if record.state in ("running", "paused") else 0,
        "ExitCode": record.exit_code or 0,
        "Error": "",
        "StartedAt": _iso(record.started),
        "FinishedAt": _iso(record.finished),
    }


def _restart_policy(policy: str) -> dict:
    name, _, count = policy.partition(":")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _mounts(spec: dict) -> list[dict]:
    result = []
    for m in spec.get("mounts", []):
        if m["type"] == "bind" and not m["destination"].startswith("/etc/"):
            result.append(
                {
                    "Type": "bind",
                    "Source": m["source"],
                    "Destination": m["destination"],
                    "Mode": "",
                    "RW": "ro" not in m["options"],
                    "Propagation": "rprivate",
                }
            )
    return result


def _port_bindings(record: Record) -> dict:
    result: dict = {}
    for p in record.config.get("network", {}).get("publish", []):
        binding = {"HostIp": p["host_ip"], "HostPort": str(p["host_port"] or "")}
        result.setdefault(f"{p['container_port']}/{p['proto']}", []).append(binding)
    return result


def _network_settings(engine, record: Record) -> dict:
    from hutch.engine.networking import settings

    return settings(engine, record)


def _resources(spec: dict, opts: dict) -> dict:
    """Docker's HostConfig resource fields from the spec's ``linux.resources`` (0/empty: not set)."""
    res = spec.get("linux", {}).get("resources", {})
    mem, cpu, pids, blkio = (res.get(k, {}) for k in ("memory", "cpu", "pids", "blockIO"))
    period, quota = cpu.get("period", 0), cpu.get("quota", 0)
    nano = quota * 10**9 // period if quota > 0 and period else 0  # --cpus, as the quota it became

    def throttle(key: str) -> list[dict]:
        return [{"Path": f"{t['major']}:{t['minor']}", "Rate": t["rate"]} for t in blkio.get(key, [])]

    return {
        "Memory": mem.get("limit", 0),
        "MemorySwap": mem.get("swap", 0),
        "MemoryReservation": mem.get("reservation", 0),
        "OomKillDisable": mem.get("disableOOMKiller", False),
        "NanoCpus": nano,
        "CpuShares": cpu.get("shares", 0),
        "CpuPeriod": period,
        "CpuQuota": quota,
        "CpusetCpus": cpu.get("cpus", ""),
        "CpusetMems": cpu.get("mems", ""),
        "PidsLimit": pids.get("limit"),
        "BlkioWeight": blkio.get("weight", 0),
        "BlkioDeviceReadBps": throttle("throttleReadBpsDevice"),
        "BlkioDeviceWriteBps": throttle("throttleWriteBpsDevice"),
        "CgroupParent": opts.get("cgroup_parent") or "",
    }


def inspect_container(engine, record: Record) -> dict:
    """The container as Docker's JSON, from its record and generated spec."""
    spec = record.config["spec"]
    opts = record.config.get("options", {})
    process = spec["process"]
    cdir = engine.container_dir(record.id)
    return {
        "Id": record.id,
        "Created": _iso(record.created),
        "Path": process["args"][0] if process["args"] else "",
        "Args": process["args"][1:],
        "State": _state(record),
        "Image": record.image_id,
        "Name": "/" + record.name,
        "Driver": "overlay",
        "HostnamePath": str(cdir / "hostname"),
        "HostsPath": str(cdir / "hosts"),
        "LogPath": str(cdir / "container.log"),
        "RestartCount": record.restarts,
        "ResolvConfPath": str(cdir / "resolv.conf"),
        "Mounts": _mounts(spec),
        "Config": {
            "Hostname": spec.get("hostname", ""),
            "User": spec.get("annotations", {}).get("io.hutch.user", ""),
            "Tty": process.get("terminal", False),
            "OpenStdin": opts.get("interactive", False),
            "Env": process.get("env", []),
            "Cmd": opts.get("command") or None,
            "Entrypoint": opts.get("entrypoint"),
            "WorkingDir": process.get("cwd", "/"),
            "Image": record.image_ref,
            "Labels": opts.get("labels") or {},
        },
        "HostConfig": {
            **_resources(spec, opts),
            "NetworkMode": opts.get("network", "none"),
            "PortBindings": _port_bindings(record),
            "AutoRemove": opts.get("remove", False),
            "RestartPolicy": _restart_policy(opts.get("restart") or "no"),
            "LogConfig": {"Type": "k8s-file", "Config": opts.get("log_opts") or {}},
            "ReadonlyRootfs": spec.get("root", {}).get("readonly", False),
            "UsernsMode": "" if opts.get("userns", "host") == "host" else opts["userns"],
            "IDMappings": _id_mappings(opts),
            "Binds": [
                f"{v['source']}:{v['destination']}" + (":ro" if v["readonly"] else "")
                for v in opts.get("volumes", [])
            ],
        },
        "NetworkSettings": _network_settings(engine, record),
        "GraphDriver": {
            "Name": "overlay",
            "Data": {
                "LowerDir": ":".join(reversed(record.config.get("layers", []))),
                "UpperDir": str(cdir / "upper"),
                "WorkDir": str(cdir / "work"),
                "MergedDir": str(cdir / "merged"),
            },
        },
    }


def _id_mappings(opts: dict) -> dict | None:
    """Podman's ``IDMappings`` (``container:host:size`` strings) and how the layers are shifted."""
    id_map = opts.get("userns_map")
    if not id_map:
        return None

    def text(mappings: list[dict]) -> list[str]:
        return [f"{m['containerID']}:{m['hostID']}:{m['size']}" for m in mappings]

    return {"UidMap": text(id_map["uid"]), "GidMap": text(id_map["gid"]), "Layers": opts.get("userns_layers")}
