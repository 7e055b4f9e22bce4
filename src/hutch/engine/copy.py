"""``hutch cp``: files between a container and the host, as a tar stream between two processes.

One side runs in the container's filesystem (runtime.fsview: its mount namespace, or its overlay in a
private one), the other on the host; they talk through a pipe. The receiving side decides where entries
land by Docker's rules (``target_plan``) and extracts through tar filters: on the host ``host_filter`` (no
absolute paths, nothing that resolves outside the destination, no hard links out, no device nodes, files
owned by the caller, as Docker does); inside the container the stdlib's ``tar`` filter, confined anyway by
the container's root, with files owned by the container's root unless ``--archive``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tarfile
from pathlib import PurePosixPath
from typing import BinaryIO

from hutch.errors import Conflict, HutchError, InvalidArgument, NotFound


class Plan:
    """Where the received tree goes: extract into ``directory``; the archive's top entry is renamed to
    ``rename`` (None: kept), or stripped when ``contents_only``."""

    __slots__ = ("directory", "rename", "contents_only")

    def __init__(self, directory: str, rename: str | None = None, contents_only: bool = False) -> None:
        self.directory, self.rename, self.contents_only = directory, rename, contents_only


def target_plan(dest: str, dest_kind: str | None, src_is_dir: bool, src_contents_only: bool) -> Plan:
    """Docker's rules for ``cp SRC DEST``; ``dest_kind`` is "dir", "file" or None (missing)."""
    if dest_kind == "dir":
        return Plan(dest, contents_only=src_is_dir and src_contents_only)
    if dest_kind == "file":
        if src_is_dir:
            raise InvalidArgument(f"cannot copy a directory to a file: {dest}")
        return Plan(os.path.dirname(dest) or ".", rename=os.path.basename(dest))
    if dest.endswith("/") and not src_is_dir:
        raise NotFound(f"destination directory {dest} does not exist")
    return Plan(os.path.dirname(dest.rstrip("/")) or "/", rename=os.path.basename(dest.rstrip("/")))


def parse_location(text: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` -> (container, path); a host path (or ``-``) -> (None, path). A host path with a
    colon must be written with a slash first (``./a:b``), as in Docker."""
    if text.startswith(("/", ".")) or ":" not in text:
        return None, text
    container, path = text.split(":", 1)
    if not container:
        raise InvalidArgument(f"invalid copy location {text!r}: empty container name")
    return container, path or "/"


def send(src: str, out: BinaryIO, follow: bool, where: str = "in the container") -> None:
    """Write ``src`` as a tar stream named by its basename (the caller's cwd is the root to resolve in)."""
    contents_only = src.endswith("/.")
    path = src[:-2] if contents_only else src.rstrip("/") or "/"
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"could not find the file {src} {where}") from None
    name = PurePosixPath(path).name or "."
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, dereference=False) as tar:
        if follow and stat.S_ISLNK(os.lstat(path).st_mode):
            path = os.path.realpath(path)
        tar.add(path, arcname=name, recursive=True)
    del st


def receive(
    stream: BinaryIO, dest: str, on_host: bool, archive: bool, contents_only: bool, name: str | None = None
) -> None:
    """Extract the tar ``stream`` at ``dest`` by Docker's rules; ``name``: what the archive's top entry
    stands for, when the sender named it otherwise (a followed link, archived under its target's name)."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        first = tar.next()
        if first is None:
            return
        try:
            st = os.stat(dest)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        except FileNotFoundError:
            kind = None
        plan = target_plan(dest, kind, first.isdir(), contents_only)
        top = first.name.rstrip("/")
        if name is not None and plan.rename is None and not plan.contents_only and name != top:
            plan.rename = name
        if kind is None and not os.path.isdir(plan.directory):
            raise NotFound(f"destination directory {plan.directory} does not exist")
        member = first
        while member is not None:
            placed = _place(member, top, plan)
            if placed is not None:
                if not on_host and not archive:
                    placed.uid = placed.gid = 0
                    placed.uname = placed.gname = ""
                filter_ = host_filter if on_host else "tar"
                tar.extract(placed, plan.directory, set_attrs=True, numeric_owner=True, filter=filter_)
            member = tar.next()


def host_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """What may land on the host from a container's archive.

    The stdlib's ``tar`` filter refuses absolute names and any path that resolves (through symlinks already
    on disk, including ones this archive made) outside ``dest``. On top: hard links must point inside,
    device nodes and fifos are refused, and files belong to the caller, as Docker does. Symbolic links are
    copied as they are, absolute ones too (``docker cp`` keeps them); nothing is ever written through one
    that leads outside.
    """
    checked = tarfile.tar_filter(member, dest)
    if member.islnk():
        root = os.path.realpath(dest)
        target = os.path.realpath(os.path.join(dest, member.linkname))
        if os.path.commonpath([root, target]) != root:
            raise tarfile.LinkOutsideDestinationError(member, target)
    if member.ischr() or member.isblk() or member.isfifo():
        raise tarfile.SpecialFileError(member)
    return checked.replace(uid=None, gid=None, uname=None, gname=None, deep=False)


def _place(member: tarfile.TarInfo, top: str, plan: Plan) -> tarfile.TarInfo | None:
    name = member.name.rstrip("/")
    rest = name[len(top) :] if name == top or name.startswith(top + "/") else None
    if rest is None:
        raise HutchError(f"unexpected entry {member.name!r} in the copied archive")
    if plan.contents_only:
        if not rest:
            return None
        member.name = rest.lstrip("/")
    elif plan.rename is not None:
        member.name = plan.rename + rest
    if member.islnk() and plan.rename is not None and (member.linkname + "/").startswith(top + "/"):
        member.linkname = plan.rename + member.linkname[len(top) :]
    return member


def copy(engine, src: str, dest: str, follow: bool = False, archive: bool = False) -> None:
    """``hutch cp SRC DEST`` with exactly one side ``CONTAINER:PATH``."""
    src_ctr, src_path = parse_location(src)
    dest_ctr, dest_path = parse_location(dest)
    if (src_ctr is None) == (dest_ctr is None):
        raise InvalidArgument(
            "copying between containers or between host paths is not supported: name one CONTAINER:PATH"
        )
    if dest_ctr is not None and not dest_path.startswith("/"):
        dest_path = "/" + dest_path
    if src_ctr is not None and not src_path.startswith("/"):
        src_path = "/" + src_path
    record = engine.lookup(src_ctr or dest_ctr)
    if record.is_microvm and _copy_vm(engine, record, src_ctr, src_path, dest_path, follow, archive):
        return
    data_r, data_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        _child(
            engine, record, src_ctr is not None, src_path, dest_path, data_r, data_w, err_w, follow, archive
        )
    os.close(err_w)
    try:
        if src_ctr is not None:
            os.close(data_w)
            with os.fdopen(data_r, "rb") as stream:
                if dest_path == "-":
                    _pump(stream, sys.stdout.buffer)
                else:
                    receive(stream, dest_path, True, archive, False)
        else:
            os.close(data_r)
            with os.fdopen(data_w, "wb") as stream:
                if src_path == "-":
                    _pump(sys.stdin.buffer, stream)
                else:
                    send(os.path.abspath(src_path), stream, follow, "on the host")
    except (BrokenPipeError, tarfile.ReadError) as exc:
        failure: BaseException | None = exc  # the other side failed first: prefer its error
    except BaseException as exc:
        failure = exc
    else:
        failure = None
    _, status = os.waitpid(pid, 0)
    with os.fdopen(err_r, "rb") as err:
        report = err.read()
    if failure is not None and not report:
        if isinstance(failure, tarfile.TarError):
            raise HutchError(f"copy failed: {failure}") from None
        raise failure
    if report:
        error = json.loads(report)
        exc = NotFound(error["message"]) if error["kind"] == "NotFound" else HutchError(error["message"])
        raise exc
    if status != 0:
        raise HutchError(f"copy failed inside the container (status {status})")


def _copy_vm(engine, record, src_ctr, src_path: str, dest_path: str, follow: bool, archive: bool) -> bool:
    """Whether this copy with a microVM container is done. Its files are in its guest (``vmcopy``); once it
    has stopped, what is left on the host is its image (its writable layer lived in the guest's memory):
    a copy out of it reads the image (the caller's usual path, False), a copy into it is refused rather
    than lost. Its record's pid is never entered: that is the VM's supervisor, a host process."""
    from hutch.engine import vmcopy

    if record.state in ("running", "paused"):
        if src_ctr is not None:
            vmcopy.copy_out(engine, record.id, src_path, dest_path, follow, archive)
        else:
            vmcopy.copy_in(engine, record.id, src_path, dest_path, follow, archive)
        return True
    if src_ctr is None:
        raise Conflict(
            f"cannot copy into microVM container {record.name} while it is {record.state}: "
            "its writable layer lives in the guest's memory"
        )
    return False


def _child(engine, record, from_container, src, dest, data_r, data_w, err_w, follow, archive) -> None:
    """In the container's filesystem: send ``src`` or receive into ``dest``. Never returns."""
    code = 0
    try:
        from hutch.runtime import fsview

        if record.state in ("running", "paused") and record.pid:
            fsview.enter_running(record.pid)
        else:
            fsview.enter_stopped(engine.overlay(record), str(engine.container_dir(record.id) / "merged"))
        if from_container:
            os.close(data_r)
            with os.fdopen(data_w, "wb") as stream:
                send(src, stream, follow)
        else:
            os.close(data_w)
            with os.fdopen(data_r, "rb") as stream:
                if dest.endswith("/-"):
                    raise InvalidArgument("'-' is a host-side stream only")
                receive(stream, dest, False, archive, src.endswith("/."))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which prints one line
        kind = type(exc).__name__
        message = str(exc) if isinstance(exc, (HutchError, OSError, tarfile.TarError)) else repr(exc)
        os.write(err_w, json.dumps({"kind": kind, "message": message}).encode())
        code = 1
    os._exit(code)


def _pump(src: BinaryIO, dst: BinaryIO) -> None:
    while chunk := src.read(1 << 16):
        dst.write(chunk)
    dst.flush()
