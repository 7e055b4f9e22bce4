"""``hutch cp`` with a running microVM container: the container's side runs in the guest, as ``tar``.

A microVM container's files live in the guest: its root is the image's erofs disk under an overlay on
the guest's own tmpfs, so there is nothing on the host to open (the record's pid is the VM's supervisor,
a host process; joining its mount namespace, as a namespace container's copy does, would read and write
the host's files). So the copy travels as a tar stream through ``hutch exec``: the guest agent runs the
image's own ``tar`` (and ``sh`` for one probe) as root in the container, as ``kubectl cp`` does in a pod.

The host keeps Docker's rules: it learns what the destination is from the probe, plans with
``copy.target_plan``, names the archive's entries by that plan and checks what it extracts with
``copy.host_filter``. An image without ``tar`` or ``sh`` gets a one-line error saying so.
"""

from __future__ import annotations

import os
import stat
import tarfile
import threading
from pathlib import PurePosixPath

from hutch.errors import HutchError, InvalidArgument, NotFound

# Prints what PATH ($1) is: "dir", "file" or "none", and for "none" whether its parent is a directory.
_PROBE = (
    'if [ -d "$1" ]; then echo dir; elif [ -e "$1" ] || [ -L "$1" ]; then echo file; '
    'elif [ -d "$(dirname "$1")" ]; then echo none; else echo noparent; fi'
)
# tar of $1 named by its basename, the link followed first when $2 is "follow" (-L: only SRC itself).
_SEND = (
    'p="$1"; [ "$2" = follow ] && p="$(readlink -f "$1")"; '
    'cd "$(dirname "$p")" && exec tar -c -f - "$(basename "$p")"'
)


def copy_out(engine, ref: str, src: str, dest: str, follow: bool, archive: bool) -> None:
    """``cp CONTAINER:SRC DEST`` (DEST ``-``: the tar stream to stdout)."""
    import sys

    from hutch.engine import copy

    kind = _probe(engine, ref, src)
    if kind in ("none", "noparent"):
        raise NotFound(f"could not find the file {src} in the container")
    path = src[:-2] if src.endswith("/.") else src.rstrip("/") or "/"
    name = PurePosixPath(path).name or "."
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    proc, errors = _start(engine, ref, ["sh", "-c", _SEND, "sh", path, "follow" if follow else ""],
                          stdin=None, stdout=write_end)  # fmt: skip
    os.close(write_end)
    failure: BaseException | None = None
    try:
        with os.fdopen(read_end, "rb") as stream:
            if dest == "-":
                copy._pump(stream, sys.stdout.buffer)
            else:
                copy.receive(stream, dest, True, archive, False, name=name)
    except (BrokenPipeError, tarfile.ReadError) as exc:
        failure = exc  # tar failed first: its own message is the one to show
    _finish(proc, errors, failure)


def copy_in(engine, ref: str, src: str, dest: str, follow: bool, archive: bool) -> None:
    """``cp SRC CONTAINER:DEST`` (SRC ``-``: a tar stream from stdin, extracted into the directory DEST)."""
    import sys

    from hutch.engine import copy

    kind = _probe(engine, ref, dest)
    if src == "-":
        if kind != "dir":
            raise NotFound(f"destination directory {dest} does not exist in the container")
        directory, stream_in = dest, sys.stdin.buffer
    else:
        contents_only = src.endswith("/.")
        path = os.path.abspath(src[:-2] if contents_only else src)
        try:
            st = os.stat(path) if follow else os.lstat(path)
        except FileNotFoundError:
            raise NotFound(f"could not find the file {src} on the host") from None
        plan = copy.target_plan(dest, None if kind in ("none", "noparent") else kind,
                                stat.S_ISDIR(st.st_mode), contents_only)  # fmt: skip
        if kind == "noparent":
            raise NotFound(f"destination directory {plan.directory} does not exist in the container")
        directory, stream_in = plan.directory, None
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    proc, errors = _start(engine, ref, ["tar", "-x", "-f", "-", "-C", directory], stdin=read_end, stdout=None)
    os.close(read_end)
    failure: BaseException | None = None
    try:
        with os.fdopen(write_end, "wb") as out:
            if stream_in is not None:
                copy._pump(stream_in, out)
            else:
                _archive(out, path, plan, follow, archive)
    except BrokenPipeError as exc:
        failure = exc  # tar stopped reading: its own message says why
    _finish(proc, errors, failure)


def _archive(out, path: str, plan, follow: bool, keep_owner: bool) -> None:
    """The host's ``path`` as a tar stream whose entries are already named by ``plan`` (the guest's tar
    extracts it as it is), owned by the container's root unless ``keep_owner`` (``cp -a``)."""

    def owner(member: tarfile.TarInfo) -> tarfile.TarInfo:
        if not keep_owner:
            member.uid = member.gid = 0
            member.uname = member.gname = ""
        return member

    if follow and os.path.islink(path):
        path = os.path.realpath(path)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if plan.contents_only:
            for child in sorted(os.listdir(path)):
                tar.add(os.path.join(path, child), arcname=child, filter=owner)
        else:
            tar.add(path, arcname=plan.rename or os.path.basename(path.rstrip("/")) or ".", filter=owner)


def _probe(engine, ref: str, path: str) -> str:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    proc, errors = _start(engine, ref, ["sh", "-c", _PROBE, "sh", path], stdin=None, stdout=write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        kind = answer.read().decode(errors="replace").strip()
    _finish(proc, errors, None)
    if kind not in ("dir", "file", "none", "noparent"):
        raise HutchError(f"copy: the container answered {kind!r} about {path}")
    return kind


def _start(engine, ref: str, argv: list[str], stdin: int | None, stdout: int | None):
    """``argv`` run in the container as root, its stderr collected by a thread (tar's complaints)."""
    from hutch.engine.execs import ExecOptions, exec_in

    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        stdio = (null if stdin is None else stdin, null if stdout is None else stdout, err_w)
        proc = exec_in(engine, ref, argv, ExecOptions(user="0", workdir="/", stdio=stdio))
    except BaseException:
        os.close(err_r)
        raise
    finally:
        os.close(err_w)
        os.close(null)
    collected: list[bytes] = []
    reader = threading.Thread(target=lambda: collected.append(_drain(err_r)))
    reader.start()
    return proc, (reader, collected, err_r)


def _drain(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def _finish(proc, errors, failure: BaseException | None) -> None:
    """Wait for the guest's process; its failure (or ours) becomes one line."""
    reader, collected, err_r = errors
    _, status = os.waitpid(proc.pid, 0)
    reader.join()
    os.close(err_r)
    code = os.waitstatus_to_exitcode(status)
    said = b"".join(collected).decode(errors="replace").strip().splitlines()
    last = said[-1].removeprefix("hutch: ") if said else ""
    if code == 127:  # the agent's (or sh's) "not found"
        raise InvalidArgument(f"copying with a microVM container needs sh and tar in its image: {last}")
    if code != 0:
        raise HutchError(f"copy failed in the container: {last or f'exit status {code}'}")
    if failure is not None:
        raise HutchError(f"copy failed: {failure}")
