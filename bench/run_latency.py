#!/usr/bin/env python3
"""Container start latency: ``hutch run --rm busybox true`` against podman, crun and runc, in one run.

Every tool runs the same busybox rootfs (built offline by ``tools/busybox_rootfs.py``) with ``true`` as
the command. Iterations are interleaved (each round runs every tool once, in a rotating order) so that a
noisy machine slows all of them alike. Peers that are not installed, or that cannot run here, are skipped
with a note. Everything the bench creates lives in one temporary directory that is unmounted and removed
at the end, also after Ctrl-C or SIGTERM.

    .venv/bin/python bench/run_latency.py [--runs 20] [--json bench/results/latency.json] [--only crun,runc]

Standard library only. Needs root (podman, runc and crun as root; hutch run needs namespaces).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import busybox_rootfs  # noqa: E402
from hutch_networks import teardown_networks  # noqa: E402

ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
ALL_PEERS = ("hutch", "hutch-runc", "podman", "crun", "runc", "hutch-bridge", "podman-bridge")
MNT_DETACH = 2


@dataclass
class Peer:
    """One command being timed; ``argv(i)`` gives the command line for iteration ``i``."""

    name: str
    argv: Callable[[int], list[str]]
    note: str = ""
    samples_ms: list[float] = field(default_factory=list)
    error: str | None = None

    def run_once(self, i: int) -> float:
        cmd = self.argv(i)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _, err = proc.communicate()
        except BaseException:
            _stop(proc)  # interrupted: let the tool clean up after itself rather than SIGKILL it
            raise
        elapsed = (time.perf_counter() - t0) * 1000.0
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail) or '(no stderr)'}")
        return elapsed


def _stop(proc: subprocess.Popen) -> None:
    """Ask a child to stop (SIGTERM), give it 10 s to tidy up, then kill it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


class Bench:
    """Sets up every peer under one work directory and tears all of it down in ``cleanup``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="hutch-bench-", dir=args.workdir))
        self.tar = self.work / "busybox.tar"
        self.bundle = self.work / "bundle"
        self.peers: list[Peer] = []
        self.skipped: dict[str, str] = {}
        self._podman: list[str] | None = None
        self._state_roots: dict[str, tuple[str, Path]] = {}  # peer -> (binary, --root state dir)
        self._ns_helper: subprocess.Popen | None = None
        self._tag = f"hb{os.getpid()}"
        self._hutch_roots: list[Path] = []

    # ----- set-up -------------------------------------------------------------------------------

    def setup(self) -> None:
        busybox_rootfs.build_rootfs_tar(self.tar, Path(self.args.busybox))
        wanted = [p for p in ALL_PEERS if p in self.args.only and p not in self.args.skip]
        for name in wanted:
            try:
                getattr(self, "_setup_" + name.replace("-", "_"))()
            except _Skip as why:
                self.skipped[name] = str(why)

    def _add(self, name: str, argv: Callable[[int], list[str]], note: str = "") -> None:
        peer = Peer(name, argv, note)
        try:
            for w in range(max(1, self.args.warmup)):
                peer.run_once(-1 - w)
        except RuntimeError as err:
            raise _Skip(f"does not run here: {err}")
        self.peers.append(peer)

    def _setup_hutch(self) -> None:
        hutch = Path(self.args.hutch)
        if not os.access(hutch, os.X_OK):
            raise _Skip(f"{hutch} not found (run `make deps`)")
        root = self._hutch_root()
        self._add(
            "hutch",
            lambda i: [
                str(hutch),
                "--root",
                str(root),
                "run",
                "--rm",
                "--network",
                "none",
                "busybox",
                "true",
            ],
        )

    def _hutch_root(self) -> Path:
        """One hutch root (with busybox imported) for the hutch rows."""
        root = self.work / "hutch"
        if root not in self._hutch_roots:
            hutch = self.args.hutch
            _check([hutch, "--root", str(root), "import", str(self.tar), "busybox"], "hutch import")
            self._hutch_roots.append(root)
        return root

    # --- B2: the default bridge network (networking, issue 6) ---

    def _setup_hutch_bridge(self) -> None:
        if not os.access(self.args.hutch, os.X_OK):
            raise _Skip(f"{self.args.hutch} not found (run `make deps`)")
        root = self._hutch_root()
        argv = [self.args.hutch, "--root", str(root), "run", "--rm", "--network", "bridge", "busybox", "true"]
        self._add("hutch-bridge", lambda i: argv, "--network bridge (a veth on the root's bridge)")

    def _setup_podman_bridge(self) -> None:
        if self._podman is None:
            self._setup_podman_store()
        run = ["run", "--rm", "--network", "bridge", *ULIMITS, "busybox", "true"]
        try:
            self._add("podman-bridge", lambda i: [*self._podman, *run], "--network bridge (netavark)")
        except _Skip as first:
            try:
                self._add(
                    "podman-bridge",
                    lambda i: [*self._podman, "--runtime", "runc", *run],
                    "--network bridge (netavark), --runtime runc",
                )
            except _Skip:
                raise first

    def _setup_hutch_runc(self) -> None:
        exe = Path(self.args.hutch).with_name("hutch-runc")
        if not os.access(exe, os.X_OK):
            raise _Skip(f"{exe} not found")
        self._prepare_bundle()
        state = self.work / "hutch-runc-state"
        state.mkdir()
        self._state_roots["hutch-runc"] = (str(exe), state)
        self._add(
            "hutch-runc",
            lambda i: [
                str(exe),
                "--root",
                str(state),
                "run",
                "--bundle",
                str(self.bundle),
                f"{self._tag}-{i}",
            ],
        )

    def _setup_podman(self) -> None:
        if self._podman is None:
            self._setup_podman_store()
        run = ["run", "--rm", "--network", "none", *ULIMITS, "busybox", "true"]
        try:
            self._add("podman", lambda i: [*self._podman, *run])
        except _Skip as first:
            # crun 1.8 (podman's default runtime on Debian 12) refuses hosts with hybrid cgroups.
            try:
                self._add("podman", lambda i: [*self._podman, "--runtime", "runc", *run], "--runtime runc")
            except _Skip:
                raise first

    def _setup_podman_store(self) -> None:
        podman = shutil.which("podman")
        if not podman:
            raise _Skip("not installed")
        base = self.work / "podman"
        self._podman = [
            podman,
            "--root",
            str(base / "root"),
            "--runroot",
            str(base / "run"),
            "--tmpdir",
            str(base / "tmp"),
        ]
        _check([*self._podman, "import", "-q", str(self.tar), "busybox"], "podman import")

    def _setup_crun(self) -> None:
        crun = shutil.which("crun")
        if not crun:
            raise _Skip("not installed")
        self._setup_oci_runtime("crun", crun)

    def _setup_runc(self) -> None:
        runc = shutil.which("runc")
        if not runc:
            raise _Skip("not installed")
        self._setup_oci_runtime("runc", runc)

    def _setup_oci_runtime(self, name: str, exe: str) -> None:
        self._prepare_bundle()
        state = self.work / f"{name}-state"
        state.mkdir()
        self._state_roots[name] = (exe, state)

        def argv(i: int, prefix: tuple[str, ...] = ()) -> list[str]:
            return [
                *prefix,
                exe,
                "--root",
                str(state),
                "run",
                "--bundle",
                str(self.bundle),
                f"{self._tag}-{i}",
            ]

        try:
            self._add(name, argv)
        except _Skip as first:
            if "hybrid mode" not in str(first):
                raise
            # crun 1.8 refuses a cgroup2 hierarchy with controllers next to v1 ones ("hybrid"). Run it in a
            # private mount namespace where /sys/fs/cgroup/unified is unmounted: it then sees plain v1.
            prefix = self._legacy_cgroup_ns()
            self._add(
                name,
                lambda i: argv(i, prefix),
                "in a mount ns without /sys/fs/cgroup/unified (crun 1.8 refuses hybrid cgroups)",
            )

    def _legacy_cgroup_ns(self) -> tuple[str, ...]:
        nsenter, unshare = shutil.which("nsenter"), shutil.which("unshare")
        if not (nsenter and unshare):
            raise _Skip("hybrid cgroups and no nsenter/unshare to work around it")
        if self._ns_helper is None:
            script = "umount -l /sys/fs/cgroup/unified && echo ready && exec sleep 86400"
            self._ns_helper = subprocess.Popen(
                [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                text=True,
            )
            if self._ns_helper.stdout.readline().strip() != "ready":
                raise _Skip("could not set up a mount namespace without the cgroup2 hierarchy")
        return (nsenter, f"--mount=/proc/{self._ns_helper.pid}/ns/mnt", "--")

    def _prepare_bundle(self) -> None:
        if (self.bundle / "config.json").exists():
            return
        rootfs = self.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        with tarfile.open(self.tar) as tar:
            kwargs = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            tar.extractall(rootfs, numeric_owner=True, **kwargs)
        spec_tool = shutil.which("crun") or shutil.which("runc")
        if not spec_tool:
            raise _Skip("neither crun nor runc is installed to generate a config.json")
        _check([spec_tool, "spec"], f"{spec_tool} spec", cwd=self.bundle)
        config_path = self.bundle / "config.json"
        config = json.loads(config_path.read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = ["true"]
        config["root"] = {"path": "rootfs", "readonly": True}
        config["hostname"] = "bench"
        config_path.write_text(json.dumps(config, indent=2))

    # ----- measuring ----------------------------------------------------------------------------

    def measure(self) -> None:
        runs = self.args.runs
        for i in range(runs):
            active = [p for p in self.peers if p.error is None]
            if not active:
                break
            shift = i % len(active)
            for peer in active[shift:] + active[:shift]:
                try:
                    peer.samples_ms.append(peer.run_once(i))
                except RuntimeError as err:
                    peer.error = f"failed at iteration {i + 1}: {err}"
            if not self.args.quiet:
                print(f"\r  round {i + 1}/{runs}", end="", file=sys.stderr, flush=True)
        if not self.args.quiet:
            print(file=sys.stderr)

    # ----- tear-down ----------------------------------------------------------------------------

    def cleanup(self) -> None:
        for _name, (exe, state) in self._state_roots.items():
            out = _quiet([exe, "--root", str(state), "list", "-q"], capture=True)
            for cid in out.split():
                _quiet([exe, "--root", str(state), "delete", "-f", cid])
        if self._podman:
            _quiet([*self._podman, "rm", "-af", "-t", "0"])
            _quiet([*self._podman, "rmi", "-af"])
        # podman (and anything else killed half-way) leaves runtime state in the runtimes' default roots.
        for exe in filter(None, (shutil.which("runc"), shutil.which("crun"))):
            _delete_containers_under(exe, self.work)
        _kill_processes_mentioning(self.work)
        for root in self._hutch_roots:
            teardown_networks(Path(self.args.hutch), root)
        if self._ns_helper is not None:
            self._ns_helper.kill()
            self._ns_helper.wait()
        _unmount_under(self.work)
        shutil.rmtree(self.work, ignore_errors=True)
        if self.work.exists():
            print(f"warning: could not remove {self.work} completely", file=sys.stderr)


class _Skip(Exception):
    """This peer cannot be measured here; the message says why."""


def _check(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise _Skip(f"{what} failed: {err}")
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:]) or "(no stderr)"
        raise _Skip(f"{what} failed (exit {proc.returncode}): {tail}")


def _quiet(cmd: list[str], capture: bool = False) -> str:
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout if capture else ""


def _delete_containers_under(exe: str, top: Path) -> None:
    """``delete -f`` the containers in ``exe``'s default state root whose bundle is below ``top``."""
    try:
        listed = json.loads(_quiet([exe, "list", "--format", "json"], capture=True) or "null") or []
    except ValueError:
        return
    for c in listed:
        if isinstance(c, dict) and str(c.get("bundle", "")).startswith(f"{top}/") and c.get("id"):
            _quiet([exe, "delete", "-f", c["id"]])


def _kill_processes_mentioning(top: Path) -> None:
    """SIGKILL leftover helpers (conmon) whose command line names a path below ``top``."""
    needle = f"{top}/".encode()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass


def _unmount_under(top: Path) -> None:
    """Lazily unmount every mount at or below ``top``, deepest first."""
    libc = ctypes.CDLL(None, use_errno=True)
    prefix = str(top).rstrip("/") + "/"
    for _ in range(5):  # stacked mounts need several passes
        points = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = _unescape(line.split()[4])
                if point == str(top) or point.startswith(prefix):
                    points.append(point)
        if not points:
            return
        for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
            libc.umount2(point.encode(), MNT_DETACH)


def _unescape(field_: str) -> str:
    return field_.encode().decode("unicode_escape") if "\\" in field_ else field_


# ----- report -------------------------------------------------------------------------------------


def summarize(peer: Peer) -> dict:
    s = sorted(peer.samples_ms)
    out: dict = {"runs": len(s), "median_ms": None, "p10_ms": None, "p90_ms": None}
    if s:
        out["median_ms"] = statistics.median(s)
        if len(s) >= 2:
            q = statistics.quantiles(s, n=10, method="inclusive")
            out["p10_ms"], out["p90_ms"] = q[0], q[-1]
        else:
            out["p10_ms"] = out["p90_ms"] = s[0]
    return out


def report(bench: Bench, as_json: Path | None) -> int:
    stats = {p.name: summarize(p) for p in bench.peers}
    hutch_median = stats.get("hutch", {}).get("median_ms")
    rows = [("tool", "runs", "median ms", "p10 ms", "p90 ms", "vs hutch", "note")]
    for p in bench.peers:
        st = stats[p.name]
        ratio = st["median_ms"] / hutch_median if hutch_median and st["median_ms"] else None
        st["ratio_to_hutch"] = ratio
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        note = p.note if p.error is None else f"{p.note + '; ' if p.note else ''}ERROR {p.error}"
        rows.append(
            (
                p.name,
                str(st["runs"]),
                fmt(st["median_ms"]),
                fmt(st["p10_ms"]),
                fmt(st["p90_ms"]),
                "-" if ratio is None else f"{ratio:.2f}x",
                note,
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(6)]
    print()
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [r[c].rjust(widths[c]) for c in range(1, 6)]
        print("  ".join(cells) + ("  " + r[6] if r[6] else ""))
    for name, why in bench.skipped.items():
        print(f"skipped {name}: {why}")

    verdicts = budgets(stats)
    if verdicts:
        print()
        for line in verdicts:
            print(line)

    if as_json:
        doc = {
            "benchmark": "run --rm busybox true",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": {"kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count()},
            "runs": bench.args.runs,
            "results": {
                p.name: {
                    "command": p.argv(0),
                    "note": p.note,
                    "error": p.error,
                    "samples_ms": [round(x, 3) for x in p.samples_ms],
                    **stats[p.name],
                }
                for p in bench.peers
            },
            "skipped": bench.skipped,
            "budgets": verdicts,
        }
        as_json.parent.mkdir(parents=True, exist_ok=True)
        as_json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {as_json}")
    return 1 if any(p.error for p in bench.peers) else 0


def budgets(stats: dict[str, dict]) -> list[str]:
    """Verdicts for the budgets of bench/README.md that this run measured."""
    med = {name: st["median_ms"] for name, st in stats.items() if st["median_ms"]}
    lines = []
    if "hutch" in med and "podman" in med:
        ratio = med["podman"] / med["hutch"]
        verdict = "PASS" if ratio >= 4.0 and med["hutch"] < 100.0 else "FAIL"
        lines.append(
            f"B1 hutch run {med['hutch']:.1f} ms; podman --network none / hutch = {ratio:.2f} "
            f"(budget: at least 4, and hutch under 100 ms): {verdict}"
        )
    elif "hutch" in med:
        verdict = "PASS" if med["hutch"] < 100.0 else "FAIL"
        lines.append(f"B1 hutch run {med['hutch']:.1f} ms (no podman to compare; under 100 ms): {verdict}")
    if "hutch-bridge" in med and "podman-bridge" in med:
        ratio = med["podman-bridge"] / med["hutch-bridge"]
        verdict = "PASS" if ratio >= 5.0 and med["hutch-bridge"] < 150.0 else "FAIL"
        lines.append(
            f"B2 hutch run --network bridge {med['hutch-bridge']:.1f} ms;"
            f" podman bridge / hutch = {ratio:.2f} "
            f"(budget: at least 5, and hutch under 150 ms): {verdict}"
        )
    if "hutch-runc" in med and "runc" in med:
        verdict = "PASS" if med["hutch-runc"] < med["runc"] else "FAIL"
        lines.append(
            f"B3 hutch-runc run {med['hutch-runc']:.1f} ms vs runc run {med['runc']:.1f} ms "
            f"(budget: faster than runc): {verdict}"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed iterations per tool (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per tool first (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--hutch", default=str(REPO / ".venv" / "bin" / "hutch"), help="hutch executable")
    parser.add_argument("--busybox", default=str(busybox_rootfs.DEFAULT_BUSYBOX), help="static busybox")
    parser.add_argument("--workdir", help="where to make the temporary directory (default $TMPDIR or /tmp)")
    parser.add_argument(
        "--only",
        default=",".join(ALL_PEERS),
        help=f"comma-separated tools to time (of {','.join(ALL_PEERS)})",
    )
    parser.add_argument("--skip", default="", help="comma-separated tools not to time")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    args.skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    unknown = (args.only | args.skip) - set(ALL_PEERS)
    if unknown:
        parser.error(f"unknown tool(s): {', '.join(sorted(unknown))}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run_latency: must run as root (podman, runc, crun and hutch run need it)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    bench = Bench(args)
    try:
        if not args.quiet:
            print(f"setting up in {bench.work} ...", file=sys.stderr)
        bench.setup()
        if not bench.peers:
            for name, why in bench.skipped.items():
                print(f"skipped {name}: {why}")
            print("run_latency: nothing could be measured", file=sys.stderr)
            return 1
        if not args.quiet:
            names = ", ".join(p.name for p in bench.peers)
            print(f"timing {args.runs} interleaved rounds of: {names}", file=sys.stderr)
        bench.measure()
        return report(bench, args.json)
    except busybox_rootfs.RootfsError as err:
        print(f"run_latency: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrun_latency: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
