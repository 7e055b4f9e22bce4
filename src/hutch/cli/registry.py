"""Registry commands: pull, push, login, logout.

Only the standard library is imported here; the registry client is imported by the handlers, so no other
command pays for it.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Add ``pull``, ``push``, ``login`` and ``logout`` (just ``only`` when given)."""
    if only in (None, "pull"):
        p = sub.add_parser("pull", help="pull an image from a registry")
        p.add_argument("--platform", help="os/arch[/variant] to pull from a multi-platform image")
        p.add_argument("-q", "--quiet", action="store_true", help="print only the image reference")
        _add_tls(p)
        p.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
        p.set_defaults(handler=cmd_pull)
    if only in (None, "push"):
        p = sub.add_parser("push", help="push an image to a registry")
        p.add_argument("-q", "--quiet", action="store_true", help="print only the manifest digest")
        _add_tls(p)
        p.add_argument("image", metavar="NAME[:TAG]")
        p.set_defaults(handler=cmd_push)
    if only in (None, "login"):
        p = sub.add_parser("login", help="log in to a registry")
        p.add_argument("-u", "--username")
        p.add_argument("-p", "--password")
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        _add_tls(p)
        p.add_argument("server", metavar="REGISTRY", nargs="?", default="docker.io")
        p.set_defaults(handler=cmd_login)
    if only in (None, "logout"):
        p = sub.add_parser("logout", help="log out from a registry")
        p.add_argument("server", metavar="REGISTRY", nargs="?", default="docker.io")
        p.set_defaults(handler=cmd_logout)


def _add_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-verify",
        default="true",
        choices=("true", "false"),
        help="false: accept any certificate and plain HTTP (loopback registries may use HTTP anyway)",
    )


def registry_for(ctx, domain: str, tls_verify: bool = True, credentials=None):
    """A registry client with the saved credentials and the CA directories hutch trusts."""
    from hutch.image.registry import credentials as creds
    from hutch.image.registry.client import Registry
    from hutch.image.registry.transport import SYSTEM_CERTS_DIRS

    return Registry(
        domain,
        credentials=credentials if credentials is not None else creds.lookup(domain),
        certs_dirs=[ctx.root / "certs.d", *SYSTEM_CERTS_DIRS],
        insecure=not tls_verify,
    )


def pull_image(
    ctx, text: str, *, quiet: bool = False, platform: str | None = None, tls_verify: bool = True, out=None
):
    """Pull ``text`` into the context's store with progress on ``out`` (stdout); ``run --pull`` too."""
    from hutch.image.registry.progress import Progress
    from hutch.image.registry.pull import parse_platform, pull
    from hutch.oci import reference

    ref = reference.normalize(text)
    progress = Progress(out, mode="quiet" if quiet else "auto")
    registry = registry_for(ctx, ref.domain, tls_verify)
    image = pull(ctx.images, text, registry, progress, parse_platform(platform))
    return image, ref


def cmd_pull(args: argparse.Namespace, ctx) -> int:
    """``hutch pull [--platform P] [-q] REF``: Docker's output, ending with the full reference."""
    from hutch.oci import reference

    if reference.parse(args.image).name_only and not args.quiet:
        print("Using default tag: latest")
    _, ref = pull_image(
        ctx, args.image, quiet=args.quiet, platform=args.platform, tls_verify=args.tls_verify == "true"
    )
    print(str(ref))
    return 0


def cmd_push(args: argparse.Namespace, ctx) -> int:
    """``hutch push [-q] REF``: uploads what the registry lacks, then the manifest."""
    from hutch.image.registry.progress import Progress
    from hutch.image.registry.push import push
    from hutch.oci import reference

    ref = reference.normalize(args.image)
    progress = Progress(mode="quiet" if args.quiet else "auto")
    digest = push(ctx.images, args.image, registry_for(ctx, ref.domain, args.tls_verify == "true"), progress)
    if args.quiet:
        print(digest)
    return 0


def _server_domain(server: str) -> str:
    """``https://host:port/v2/`` or ``host:port`` -> ``host:port``; Docker Hub's names -> docker.io."""
    from urllib.parse import urlsplit

    host = urlsplit(server if "://" in server else f"//{server}").netloc or server
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def cmd_login(args: argparse.Namespace, ctx) -> int:
    """``hutch login [-u U] [-p P | --password-stdin] REGISTRY``: checks, then saves the credentials."""
    import getpass

    from hutch.errors import InvalidArgument
    from hutch.image.registry import credentials as creds
    from hutch.image.registry.login import check_login

    domain = _server_domain(args.server)
    if args.password_stdin:
        if args.password:
            raise InvalidArgument("--password and --password-stdin are mutually exclusive")
        if not args.username:
            raise InvalidArgument("must provide --username with --password-stdin")
        args.password = sys.stdin.readline().rstrip("\r\n")
    user = args.username or input("Username: ")
    password = args.password if args.password is not None else getpass.getpass("Password: ")
    if not user or not password:
        raise InvalidArgument("username and password are required")
    registry = registry_for(ctx, domain, args.tls_verify == "true", credentials=(user, password))
    check_login(registry)
    path = creds.save(domain, user, password)
    print(f"Credentials saved in {path}")
    print("Login Succeeded")
    return 0


def cmd_logout(args: argparse.Namespace, ctx) -> int:
    """``hutch logout REGISTRY``: forgets saved credentials."""
    from hutch.image.registry import credentials as creds

    domain = _server_domain(args.server)
    if creds.erase(domain):
        print(f"Removing login credentials for {domain}")
    else:
        print(f"Not logged in to {domain}")
    return 0
