"""Image references (``[domain/]path[:tag][@digest]``), parsed and normalised the way Docker does.

Users type ``busybox``; the store keys images by ``docker.io/library/busybox:latest``. Normalising in one
place means ``busybox``, ``library/busybox`` and ``docker.io/library/busybox:latest`` all name the same
image, and ``familiar()`` turns the full form back into what ``docker images`` prints. The grammar follows
github.com/distribution/reference (lowercase path components, a domain recognised by a '.' or ':' or by
being ``localhost``, tags of at most 128 word characters).
"""

from __future__ import annotations

import re
from collections import namedtuple

from hutch.errors import InvalidArgument
from hutch.oci.digest import Digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE_RE = re.compile(rf"^(?:({_DOMAIN})/)?({_PATH})(?::({_TAG}))?(?:@({_DIGEST}))?$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


class Reference(namedtuple("Reference", "domain path tag digest", defaults=(None, None))):
    """A normalised reference: ``domain`` is never empty and docker.io paths carry ``library/``; ``tag``
    (str) and ``digest`` (Digest) may be None.

    A named tuple rather than a frozen dataclass or typing.NamedTuple: it is defined on every
    ``hutch run``, and the dataclasses and typing modules cost milliseconds to import."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse and normalise the domain and path; no tag is added (see ``normalize``)."""
        return parse(text)

    @property
    def name(self) -> str:
        """The repository in full form, ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as Docker prints it: ``busybox``, ``user/app``, ``localhost:5000/x``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        if self.path.startswith(OFFICIAL_PREFIX) and "/" not in self.path[len(OFFICIAL_PREFIX) :]:
            return self.path[len(OFFICIAL_PREFIX) :]
        return self.path

    @property
    def name_only(self) -> bool:
        """True when the user gave neither tag nor digest (``docker save busybox`` then means all tags)."""
        return self.tag is None and self.digest is None

    def with_default_tag(self) -> Reference:
        """``:latest`` added when neither a tag nor a digest was given, as ``docker pull`` does."""
        return self._replace(tag=DEFAULT_TAG) if self.name_only else self

    def familiar(self) -> str:
        """The short form Docker prints, e.g. ``busybox:latest``."""
        return self.familiar_name + self._suffix()

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return tag + digest

    def __str__(self) -> str:
        return self.name + self._suffix()


def _invalid(text: str, why: str = "") -> InvalidArgument:
    return InvalidArgument(f'invalid reference format: "{text}"' + (f" ({why})" if why else ""))


def _split_domain(text: str) -> tuple[str, str]:
    """Docker's rule: the first component is a domain only if it has '.' or ':', or is ``localhost``."""
    first, slash, rest = text.partition("/")
    is_domain = slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first)
    domain, remainder = (first, rest) if is_domain else (DEFAULT_DOMAIN, text)
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse(text: str) -> Reference:
    """Parse ``text`` into a normalised Reference; InvalidArgument names the text when it is malformed."""
    if _HEX64_RE.match(text):
        raise _invalid(text, "a 64-character hexadecimal string is an image ID, not a repository name")
    domain, remainder = _split_domain(text)
    repo = remainder.split("@", 1)[0].split(":", 1)[0]
    if repo.lower() != repo:
        raise _invalid(text, "repository name must be lowercase")
    match = _REFERENCE_RE.match(f"{domain}/{remainder}")
    if not match:
        raise _invalid(text)
    domain, path, tag, digest = match.groups()
    if len(domain) + 1 + len(path) > NAME_MAX:
        raise _invalid(text, f"repository name must not be more than {NAME_MAX} characters")
    return Reference(domain, path, tag, Digest.parse(digest) if digest else None)


def normalize(text: str) -> Reference:
    """Parse and add ``:latest`` unless a tag or digest was given: ``busybox`` -> ``...busybox:latest``."""
    return parse(text).with_default_tag()


def parse_tag_target(text: str) -> Reference:
    """A reference a tag can be written to: no digest allowed (``docker tag`` refuses one)."""
    ref = normalize(text)
    if ref.digest is not None:
        raise InvalidArgument(f'refusing to create a tag with a digest reference: "{text}"')
    return ref


def is_valid_tag(tag: str) -> bool:
    """Whether ``tag`` alone matches the tag grammar (used to read OCI ``ref.name`` annotations)."""
    return bool(_TAG_RE.match(tag))
