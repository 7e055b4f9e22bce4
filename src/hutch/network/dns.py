"""Name resolution on user-defined networks: every container's /etc/hosts is kept current.

Chosen over an embedded DNS responder because hutch has no daemon to run one: a responder would be one
more long-lived process per network. The hosts file is already the container's own (bind-mounted from its
directory), so hutch rewrites it whenever a container joins or leaves a network it shares: peers resolve
each other by container name, ``--network-alias`` and short id, through the C library's ``files`` source
(static busybox included). The default ``bridge`` network gets no peer names, as in Docker.

why rewrite in place (not write-and-rename): the file is bind-mounted into a running container, and a bind
mount pins the inode; a renamed new file would never be seen inside. Writers are serialised by the
network lock; a reader may see a short file for an instant, as with Docker's own rewrites.
"""

from __future__ import annotations

MARKER = "# --- hutch: containers on the same networks ---\n"
DEFAULT_NETWORK = "bridge"


def _split(text: str) -> str:
    head, _, _ = text.partition(MARKER)
    return head


def _rewrite(path: str, text: str) -> None:
    try:
        with open(path, "r+") as f:
            f.write(text)
            f.truncate()
    except FileNotFoundError:
        pass  # the container was removed meanwhile


def add_self(path: str, address: str, names: list[str]) -> None:
    """The container's own address for its host name, above the peers' section."""
    try:
        with open(path) as f:
            head = _split(f.read())
    except FileNotFoundError:
        return
    _rewrite(path, head + f"{address}\t{' '.join(names)}\n" + MARKER)


def refresh(ipam, containers: set[str]) -> None:
    """Rewrite the peers' section of each container in ``containers`` from the endpoints table."""
    endpoints = ipam.all_endpoints()
    by_network: dict[str, list] = {}
    for ep in endpoints:
        by_network.setdefault(ep.network, []).append(ep)
    for cid in containers:
        mine = [ep for ep in endpoints if ep.container == cid]
        if not mine or not mine[0].hosts_path:
            continue
        lines = []
        for ep in mine:
            if ep.network == DEFAULT_NETWORK:
                continue
            for peer in by_network.get(ep.network, []):
                if peer.container != cid:
                    names = [peer.name, *peer.aliases, peer.container[:12]]
                    lines.append(f"{peer.address}\t{' '.join(dict.fromkeys(names))}\n")
        try:
            with open(mine[0].hosts_path) as f:
                head = _split(f.read())
        except FileNotFoundError:
            continue
        _rewrite(mine[0].hosts_path, head + MARKER + "".join(lines))


def neighbours(ipam, cid: str) -> set[str]:
    """Containers sharing a user-defined network with ``cid`` (whose hosts files name it)."""
    networks = {ep.network for ep in ipam.endpoints_of(cid) if ep.network != DEFAULT_NETWORK}
    return {ep.container for n in networks for ep in ipam.endpoints_on(n)} - {cid}
