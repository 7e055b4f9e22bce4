"""Image commands: images, import, load, save, tag, rmi, and the ``image`` group that aliases them.

Only the standard library is imported here; each handler imports the image code it needs, so ``hutch run``
never loads the archive or import code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Add the image commands at the top level and under ``hutch image`` (just ``only`` when given)."""

    def wanted(name: str) -> bool:
        return only is None or only == name

    if wanted("images"):
        _add_images(sub.add_parser("images", help="list images"))
    if wanted("import"):
        _add_import(sub.add_parser("import", help="create an image from a root filesystem tarball"))
    if wanted("load"):
        _add_load(sub.add_parser("load", help="load images from a docker-archive or OCI tarball"))
    if wanted("save"):
        _add_save(sub.add_parser("save", help="save images to a docker-archive tarball"))
    if wanted("tag"):
        _add_tag(sub.add_parser("tag", help="give an image another name"))
    if wanted("rmi"):
        _add_rmi(sub.add_parser("rmi", help="remove images"))
    if wanted("image"):
        _register_image_group(sub)


def _register_image_group(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("image", help="manage images").add_subparsers(
        dest="image_command", metavar="COMMAND"
    )
    _add_images(group.add_parser("ls", aliases=["list"], help="list images"))
    _add_import(group.add_parser("import", help="create an image from a root filesystem tarball"))
    _add_load(group.add_parser("load", help="load images from a tarball"))
    _add_save(group.add_parser("save", help="save images to a tarball"))
    _add_tag(group.add_parser("tag", help="give an image another name"))
    _add_rmi(group.add_parser("rm", aliases=["remove"], help="remove images"))
    _add_inspect(group.add_parser("inspect", help="show images as JSON"))
    _add_prune(group.add_parser("prune", help="remove unused images"))


def _add_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="accepted for compatibility (no intermediates)")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate IDs")
    p.add_argument("--format", help="'json' for one JSON object per line")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]", help="only this repository")
    p.set_defaults(handler=cmd_images)


def _add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--message", default="", help="commit message for the imported image")
    p.add_argument("-c", "--change", action="append", default=[], help="apply a Dockerfile instruction")
    p.add_argument("source", metavar="FILE|-", help="tarball to import ('-' reads stdin)")
    p.add_argument("name", nargs="?", metavar="REPOSITORY[:TAG]", help="name for the image")
    p.set_defaults(handler=cmd_import)


def _add_load(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", type=Path, help="read from this file instead of stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.set_defaults(handler=cmd_load)


def _add_save(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(handler=cmd_save)


def _add_tag(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    p.set_defaults(handler=cmd_tag)


def _add_rmi(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="remove every tag, even of images in use")
    p.add_argument("--no-prune", action="store_true", help="accepted for compatibility")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(handler=cmd_rmi)


def _add_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="not supported yet; output is JSON")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(handler=cmd_image_inspect)


def _add_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="remove all unused images, not just dangling")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_prune)


def _in_use(ctx):
    """The engine's "which containers use this image" check (none when the engine does not offer it)."""
    return getattr(ctx, "containers_using_image", lambda _image_id: [])


# ----- handlers --------------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace, ctx) -> int:
    """``hutch import FILE|- [NAME[:TAG]]``: prints the new image ID, as Docker does."""
    from hutch.image.importer import import_tarball

    source = sys.stdin.buffer if args.source == "-" else Path(args.source)
    image = import_tarball(ctx.images, source, args.name, message=args.message, changes=args.change)
    print(image.id)
    return 0


def cmd_load(args: argparse.Namespace, ctx) -> int:
    """``hutch load [-i FILE]``: one line per loaded name, or the ID of an untagged image."""
    from hutch.errors import InvalidArgument
    from hutch.image.archive import load

    if args.input is None and sys.stdin.isatty():
        raise InvalidArgument("requested load from stdin, but stdin is a terminal: use -i FILE or a pipe")
    loaded = load(ctx.images, args.input if args.input is not None else sys.stdin.buffer)
    if not args.quiet:
        for item in loaded:
            for line in [f"Loaded image: {n}" for n in item.names] or [f"Loaded image ID: {item.image.id}"]:
                print(line)
    return 0


def cmd_save(args: argparse.Namespace, ctx) -> int:
    """``hutch save [-o FILE] IMAGE...``: a docker-archive, refused on a terminal as Docker does."""
    from hutch.errors import InvalidArgument
    from hutch.image.archive import save

    if args.output is None:
        if sys.stdout.isatty():
            raise InvalidArgument("cowardly refusing to save to a terminal: use -o FILE or redirect")
        sys.stdout.flush()
        save(ctx.images, args.images, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        save(ctx.images, args.images, args.output)
    return 0


def cmd_tag(args: argparse.Namespace, ctx) -> int:
    """``hutch tag SOURCE TARGET``."""
    ctx.images.tag(args.source, args.target)
    return 0


def cmd_rmi(args: argparse.Namespace, ctx) -> int:
    """``hutch rmi [-f] IMAGE...``: every image is tried; the status says whether any failed."""
    from hutch.errors import HutchError

    status = 0
    for ref in args.images:
        try:
            for record in ctx.images.remove(ref, force=args.force, in_use=_in_use(ctx)):
                for action, what in record.items():
                    print(f"{action}: {what}")
        except HutchError as err:
            print(f"hutch: {err}", file=sys.stderr)
            status = 1
    ctx.engine.sweep_vm_disks()
    return status


def cmd_image_inspect(args: argparse.Namespace, ctx) -> int:
    """``hutch image inspect IMAGE...``: a JSON array, as ``docker image inspect`` prints."""
    from hutch.errors import NotFound

    results, status = [], 0
    for ref in args.images:
        try:
            results.append(ctx.images.inspect(ref))
        except NotFound as err:
            print(f"hutch: {err}", file=sys.stderr)
            status = 1
    print(json.dumps(results, indent=4))
    return status


def cmd_prune(args: argparse.Namespace, ctx) -> int:
    """``hutch image prune [-a] [-f]``: asks first unless ``-f``, like Docker."""

    if not args.force:
        what = "all images without at least one container" if args.all else "all dangling images"
        print(
            f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ",
            end="",
            flush=True,
        )
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    report = ctx.images.prune(all=args.all, in_use=_in_use(ctx))
    report["SpaceReclaimed"] += ctx.engine.sweep_vm_disks()
    print_prune_report(report)
    return 0


def print_prune_report(report: dict) -> None:
    """Docker's lines for what an image prune removed (also the tail of ``system prune``)."""
    from hutch.cli.format import size

    if report["ImagesDeleted"]:
        print("Deleted Images:")
        for record in report["ImagesDeleted"]:
            for action, what in record.items():
                print(f"{action.lower()}: {what}")
        print()
    print(f"Total reclaimed space: {size(report['SpaceReclaimed'])}")


def cmd_images(args: argparse.Namespace, ctx) -> int:
    """``hutch images``: one row per tag (``<none>`` for untagged images), newest first."""
    from hutch.cli.format import table

    images = ctx.images.list_images()
    rows = [row for image in images for row in _rows(image, args.no_trunc)]
    if args.repository:
        rows = [r for r in rows if _matches(r, args.repository)]
    if args.quiet:
        for image_id in dict.fromkeys(r["ID"] for r in rows):
            print(image_id)
        return 0
    if args.format == "json":
        for r in rows:
            print(json.dumps(r))
        return 0
    columns = ["Repository", "Tag", "Digest", "ID", "CreatedSince", "Size"]
    headers = ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]
    if not args.digests:
        del columns[2], headers[2]
    print(table(headers, [[r[c] for c in columns] for r in rows]))
    return 0


def _rows(image, no_trunc: bool) -> list[dict[str, str]]:
    """The rows ``docker images`` shows for one image."""
    from hutch.cli.format import ago, size
    from hutch.oci.reference import parse

    created = _timestamp(image.created)
    base = {
        "ID": str(image.id) if no_trunc else image.id.short,
        "CreatedAt": image.created,
        "CreatedSince": ago(created) if created is not None else "N/A",
        "Size": size(image.size),
    }
    digests = {parse(d).familiar_name: d.rpartition("@")[2] for d in image.digests}
    rows = []
    for name in image.names:
        ref = parse(name)
        repo = ref.familiar_name
        rows.append({"Repository": repo, "Tag": ref.tag or "", "Digest": digests.pop(repo, "<none>"), **base})
    for repo, digest in digests.items():
        rows.append({"Repository": repo, "Tag": "<none>", "Digest": digest, **base})
    return rows or [{"Repository": "<none>", "Tag": "<none>", "Digest": "<none>", **base}]


def _matches(row: dict[str, str], pattern: str) -> bool:
    head, sep, tail = pattern.rpartition(":")
    repo, tag = (head, tail) if sep and "/" not in tail else (pattern, "")
    return row["Repository"] == repo and (not tag or row["Tag"] == tag)


def _timestamp(text: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (nanosecond fractions cut to what Python parses)."""
    from datetime import datetime

    if not text:
        return None
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
