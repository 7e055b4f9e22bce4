"""``hutch-runc``: the OCI runtime command line (create/start/state/kill/delete), over ``hutch.runtime``."""

import sys


def main() -> int:
    print("hutch-runc: not yet implemented; the OCI runtime CLI comes in a later release", file=sys.stderr)
    return 1
