"""Errors hutch reports to users.

Every error a user can cause is a ``HutchError``: the CLI prints its message on one line and exits with
``exit_code``. The codes follow Docker's: 125 for the engine's own failures, 126 when the container's
command cannot be executed, 127 when it cannot be found.
"""


class HutchError(Exception):
    """A failure the user can act on; the message names what was wrong."""

    exit_code = 125


class InvalidArgument(HutchError):
    """Bad input from the user: a flag value, a reference, a file."""


class NotFound(HutchError):
    """A named object (image, container, blob) does not exist."""


class Conflict(HutchError):
    """The request clashes with existing state (a name in use, an image still used)."""


class CorruptContent(HutchError):
    """Content did not match its digest or size, or could not be parsed."""


class UnsafeArchive(CorruptContent):
    """A tar entry would write outside its target directory."""


class CommandNotFound(HutchError):
    """The container's command does not exist (Docker exits 127)."""

    exit_code = 127


class CommandNotExecutable(HutchError):
    """The container's command exists but cannot be executed (Docker exits 126)."""

    exit_code = 126
