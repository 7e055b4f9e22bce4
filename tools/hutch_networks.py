"""Removing the bridges and nft table a throwaway hutch root made (demo, benchmarks).

hutch keeps a root's default bridge and rules for its next run, as Docker keeps docker0; a root that is
about to be deleted should take them along. Runs in hutch's own interpreter (the one beside the ``hutch``
script), so callers need not import hutch themselves.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

_CODE = (
    "import sys; from pathlib import Path; from hutch.db import Database;"
    " from hutch.network.manager import NetworkManager as M;"
    " r = Path(sys.argv[1]); M(r, Database(r / 'hutch.db')).teardown()"
)


def teardown_networks(hutch: str | Path, root: Path) -> None:
    """Best effort: a root that never made a network has nothing to remove."""
    if not (root / "hutch.db").exists():
        return
    python = Path(hutch).with_name("python")
    subprocess.run([str(python), "-c", _CODE, str(root)], capture_output=True, check=False, timeout=120)
