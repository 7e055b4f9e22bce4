"""Finding and removing orphaned hutch cgroups (``hutch system prune``).

A container's cgroup is removed when it finishes, when it is removed, and when a record whose processes
vanished is reconciled; one can still be left behind when hutch is killed between creating a cgroup and
recording the container, or a record is deleted by hand. Every hierarchy is searched (v1 controllers and
cgroup2), below the default parent and below the parents this root's records name.

Several hutch roots share the default parent (each test suite has its own root), so a cgroup this root
has no record of is not necessarily an orphan. It is removed only when it is empty and older than a grace
period (a younger one may be another root's container that is still starting), or when its processes run
on an overlay whose upper directory is in this root (a container of ours whose record is gone).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hutch.engine.containers import Engine

#: An empty cgroup younger than this may belong to a container another hutch is still starting.
GRACE_SECONDS = 10.0


def _candidate_dirs(engine: Engine) -> dict[str, set[Path]]:
    """cgroup name -> its directories, under the default parent and the parents of this root's records."""
    from hutch.cgroups import detect, open_manager
    from hutch.errors import HutchError

    parents = {d.parent for d in open_manager("x").paths().values()}
    if detect() == "v1":  # a hybrid host: the cgroup2 mount beside the v1 hierarchies, if there is one
        try:
            parents.add(open_manager("x", version="v2").paths()["unified"].parent)
        except HutchError:
            pass
    for record in engine.records.list():
        parents.update(Path(p).parent for p in record.config.get("cgroup", {}).values())
    found: dict[str, set[Path]] = {}
    for parent in parents:
        try:
            with os.scandir(parent) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False) and _looks_like_id(e.name):
                        found.setdefault(e.name, set()).add(Path(e.path))
        except FileNotFoundError:
            continue
    return found


def _looks_like_id(name: str) -> bool:
    """hutch names a container's cgroup by its 64-hex-digit id; anything else below a parent is not ours."""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _ours(pids: list[int], containers_dir: Path) -> bool:
    """Whether any of ``pids`` runs on an overlay whose upper dir is in this root's ``containers/``."""
    needle = f"upperdir={containers_dir}/"
    for pid in pids:
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                if needle in f.read():
                    return True
        except OSError:
            continue
    return False


def _age(dirs: set[Path]) -> float:
    try:
        return time.time() - max(d.stat().st_mtime for d in dirs)
    except OSError:
        return 0.0


def prune_cgroups(engine: Engine, grace: float = GRACE_SECONDS) -> list[str]:
    """Remove orphaned hutch cgroups in every hierarchy; returns the names removed.

    With a record in this root: removed unless the container runs (the record is reconciled first, so a
    container killed behind hutch's back counts as not running). Without one: see the module docstring.
    """
    from hutch.cgroups import managers_for

    removed = []
    for name, dirs in sorted(_candidate_dirs(engine).items()):
        managers = managers_for(dirs)
        record = engine.records.get(name)
        if record is not None:
            if engine.reconcile(record).state in ("running", "removing"):
                continue
        else:
            pids = sorted({pid for m in managers for pid in m.pids()})
            if pids and not _ours(pids, engine.root / "containers"):
                continue
            if not pids and _age(dirs) < grace:
                continue
        for manager in managers:
            manager.destroy()
        removed.append(name)
    return removed
