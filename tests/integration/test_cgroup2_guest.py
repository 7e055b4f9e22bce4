"""The cgroup v2 backend tested for real: the limits and cgroup tests run in a QEMU guest on pure cgroup v2.

This host is cgroup-hybrid, so here those tests exercise v1. ``tools/cgroup2_vm.py`` boots this host's own
userspace (shared read-only over virtiofs) on Debian's cloud kernel with ``cgroup_no_v1=all`` under TCG and
runs pytest there. TCG makes every hutch command slow (whole files take about 10 minutes), so by default
a subset that covers each v2 code path runs (a few minutes); ``HUTCH_CGROUP2_VM=all`` runs the files
whole, ``HUTCH_CGROUP2_VM=0`` skips the guest.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODE = os.environ.get("HUTCH_CGROUP2_VM", "subset")
# Each v2-specific path once: limits written (memory.max, pids.max, cpu.max, memory.swap.max), OOM from
# memory.events, cgroup.kill on a fork bomb, stats from cpu.stat/memory.current, update, the BPF device
# filter and the backend's own create/kill/destroy.
SUBSET = [
    "tests/integration/test_limits.py::test_memory_hog_is_oom_killed_and_reported",
    "tests/integration/test_limits.py::test_fork_bomb_stops_at_pids_limit",
    "tests/integration/test_limits.py::test_cpus_half_keeps_a_busy_loop_near_half_a_core",
    "tests/integration/test_limits.py::test_update_changes_limits_of_a_running_container",
    # the backend's own tests, on a real v2 hierarchy with controllers (seconds: no hutch commands)
    "tests/integration/test_cgroups.py",
    "tests/integration/test_devices_cgroup.py",
    # not cgroups: the guest runs Debian 12's own kernel (6.1), whose nf_tables refused the published-port
    # rules hutch wrote until they stopped using a map as a set; a published port proves they load there
    "tests/integration/test_network.py::test_published_port_from_localhost_and_another_host",
]
WHOLE = [
    "tests/integration/test_limits.py",
    "tests/integration/test_cgroups.py",
    "tests/integration/test_devices_cgroup.py",
]

pytestmark = [
    pytest.mark.root,
    pytest.mark.cgroup2_vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(MODE == "0", reason="HUTCH_CGROUP2_VM=0"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64"),
    pytest.mark.skipif(not glob.glob("/boot/vmlinuz-*-cloud-amd64"), reason="no cloud kernel"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"), reason="no virtiofsd"),
]


def test_limits_hold_on_pure_cgroup2():
    selection = WHOLE if MODE == "all" else SUBSET
    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no"]
    command = [*pytest_argv, "--basetemp=/tmp/pt", "-rs", *selection]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "cgroup2_vm.py"), "--cwd", str(REPO), "--timeout", "1500", "--"]
        + command,
        capture_output=True,
        text=True,
        timeout=1600,
    )
    output = proc.stdout + proc.stderr
    assert "cgroup mounts: /sys/fs/cgroup cgroup2\n" in output, output[-3000:]  # pure v2, nothing else
    assert proc.returncode == 0, output[-6000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 4 and " failed" not in output, output[-3000:]
