"""Resolving ``--user`` the way Docker does, from the container's own /etc/passwd and /etc/group.

The lookup runs inside the container after pivot_root, so it reads the files the container will see
(image layers, volumes) and never the host's.
"""

from __future__ import annotations

from hutch.errors import HutchError


class ExecUser:
    """Numeric identity of the container process."""

    __slots__ = ("uid", "gid", "groups", "home")

    def __init__(self, uid: int, gid: int, groups: list[int] | None = None, home: str = "/") -> None:
        self.uid = uid
        self.gid = gid
        self.groups = groups or []
        self.home = home


def _parse(text: str, min_fields: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            fields = line.split(":")
            if len(fields) >= min_fields:
                rows.append(fields)
    return rows


def _find_user(passwd: list[list[str]], spec: str) -> list[str] | None:
    for row in passwd:
        if row[0] == spec or (spec.isdigit() and row[2] == spec):
            return row
    return None


def _find_group(groups: list[list[str]], spec: str) -> list[str] | None:
    for row in groups:
        if row[0] == spec or (spec.isdigit() and row[2] == spec):
            return row
    return None


def resolve_user(spec: str, passwd_text: str, group_text: str) -> ExecUser:
    """Resolve ``user[:group]`` (names or numbers); unknown names are an error, unknown numbers are fine."""
    user_part, _, group_part = (spec or "0").partition(":")
    passwd = _parse(passwd_text, 7)
    groups = _parse(group_text, 4)
    entry = _find_user(passwd, user_part)
    if entry is None and not user_part.isdigit():
        raise HutchError(f"unable to find user {user_part}: no matching entries in passwd file")
    uid = int(entry[2]) if entry else int(user_part)
    gid = int(entry[3]) if entry else 0
    home = entry[5] if entry else "/"
    if group_part:
        group = _find_group(groups, group_part)
        if group is None and not group_part.isdigit():
            raise HutchError(f"unable to find group {group_part}: no matching entries in group file")
        gid = int(group[2]) if group else int(group_part)
    name = entry[0] if entry else None
    supplementary = [int(row[2]) for row in groups if name and name in row[3].split(",")]
    # As runc does: the groups that list the user by name, or else just the primary group, so a process
    # never keeps the supplementary groups of whoever started it.
    extra = list(dict.fromkeys(supplementary)) or [gid]
    return ExecUser(uid, gid, extra, home or "/")
