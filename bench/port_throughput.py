#!/usr/bin/env python3
"""Loopback TCP throughput through a published port: hutch (nft DNAT) against podman (netavark), one run.

Each tool runs the same busybox server on its bridge network, published on a free host port:
``nc -ll -p 80 -e sh -c 'cat > /dev/null'`` (a new ``cat`` per connection). The client, here on the host,
connects to 127.0.0.1:PORT, sends ``--mib`` MiB and waits for the server to close: the bytes cross the
host's nat OUTPUT DNAT, the bridge and the container's veth. Rounds are interleaved (hutch, podman, hutch,
...) so a noisy machine slows both alike. Budget (bench/README.md, B10): hutch's median within 10% of
podman's, or better.

    .venv/bin/python bench/port_throughput.py [--rounds 7] [--mib 256] [--json FILE]

Standard library only; needs root, podman and a hutch from `make deps`. Everything it makes (containers,
the bench roots, hutch's bridge and nft table) is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(BENCH))

import busybox_rootfs  # noqa: E402
import run_latency as common  # noqa: E402

SERVER = ["nc", "-ll", "-p", "80", "-e", "sh", "-c", "cat > /dev/null"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(port: int, mib: int) -> float:
    """MiB/s for one connection: send ``mib`` MiB, half-close, wait for the server's close."""
    block = b"\0" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        t0 = time.perf_counter()
        for _ in range(mib):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
        return mib / (time.perf_counter() - t0)


def wait_ready(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            send(port, 1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


def run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return proc.stdout


class Servers:
    """The two servers and everything needed to remove them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="hutch-tput-", dir=args.workdir))
        self.hutch = [args.hutch, "--root", str(self.work / "hutch")]
        self.podman: list[str] | None = None
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        tar = self.work / "busybox.tar"
        busybox_rootfs.build_rootfs_tar(tar, Path(self.args.busybox))
        run([*self.hutch, "import", str(tar), "busybox"], "hutch import")
        port = free_port()
        run([*self.hutch, "run", "-d", "--name", "tput", "-p", f"{port}:80", "--network", "bridge",
             "busybox", *SERVER], "hutch run")  # fmt: skip
        self.ports["hutch"] = port
        podman = shutil.which("podman")
        if podman is None:
            print("skipped podman: not installed", file=sys.stderr)
            return
        base = self.work / "podman"
        self.podman = [podman, "--root", str(base / "root"), "--runroot", str(base / "run"),
                       "--tmpdir", str(base / "tmp")]  # fmt: skip
        run([*self.podman, "import", "-q", str(tar), "busybox"], "podman import")
        port = free_port()
        cmd = ["run", "-d", "--name", "tput", "-p", f"{port}:80", "--network", "bridge", *common.ULIMITS,
               "busybox", *SERVER]  # fmt: skip
        try:
            run([*self.podman, *cmd], "podman run")
        except RuntimeError:
            # crun 1.8 (Debian 12's default for podman) refuses hybrid cgroup hosts
            run([*self.podman, "rm", "-f", "tput"], "podman rm")
            run([*self.podman, "--runtime", "runc", *cmd], "podman run --runtime runc")
        self.ports["podman"] = port

    def cleanup(self) -> None:
        common._quiet([*self.hutch, "rm", "-f", "tput"])
        common.teardown_networks(Path(self.args.hutch), self.work / "hutch")
        if self.podman:
            common._quiet([*self.podman, "rm", "-af", "-t", "0"])
            common._quiet([*self.podman, "rmi", "-af"])
        common._kill_processes_mentioning(self.work)
        common._unmount_under(self.work)
        shutil.rmtree(self.work, ignore_errors=True)


def measure(ports: dict[str, int], rounds: int, mib: int) -> dict[str, list[float]]:
    for port in ports.values():
        wait_ready(port)
    samples: dict[str, list[float]] = {name: [] for name in ports}
    names = list(ports)
    for i in range(rounds + 1):  # the first round warms up and is dropped
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            value = send(ports[name], mib)
            if i:
                samples[name].append(value)
    return samples


def report(samples: dict[str, list[float]], args: argparse.Namespace) -> None:
    med = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\n{'tool':8}  {'rounds':>6}  {'median MiB/s':>12}  {'min':>7}  {'max':>7}")
    for name, values in samples.items():
        print(f"{name:8}  {len(values):6}  {med[name]:12.0f}  {min(values):7.0f}  {max(values):7.0f}")
    if "podman" in med:
        ratio = med["hutch"] / med["podman"]
        verdict = "PASS" if ratio >= 0.9 else "FAIL"
        print(f"\nB10 published-port throughput: hutch / podman = {ratio:.2f} (budget: >= 0.90): {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mib": args.mib, "samples_mib_s": samples, "median": med}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed connections per tool (default 7)")
    parser.add_argument("--mib", type=int, default=256, help="MiB sent per connection (default 256)")
    parser.add_argument("--json", type=Path, help="also write the samples as JSON here")
    parser.add_argument("--hutch", default=str(REPO / ".venv" / "bin" / "hutch"), help="hutch executable")
    parser.add_argument("--busybox", default=str(busybox_rootfs.DEFAULT_BUSYBOX), help="static busybox")
    parser.add_argument("--workdir", help="where to make the temporary directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("port_throughput: must run as root", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, common._raise_interrupt)
    servers = Servers(args)
    try:
        servers.start()
        report(measure(servers.ports, args.rounds, args.mib), args)
        return 0
    except (RuntimeError, OSError) as err:
        print(f"port_throughput: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        servers.cleanup()


if __name__ == "__main__":
    sys.exit(main())
