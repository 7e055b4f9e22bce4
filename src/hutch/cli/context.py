"""What every command handler gets: the root paths and lazily opened stores.

Opening is lazy so that a command pays only for what it uses (``hutch ps`` never touches the blob store).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

TYPE_CHECKING = False  # typing costs ~5 ms to import; only type checkers need these names
if TYPE_CHECKING:
    from hutch.db import Database
    from hutch.engine.containers import Engine
    from hutch.image.store import ImageStore

DEFAULT_ROOT = Path("/var/lib/hutch")
DEFAULT_RUNROOT = Path("/run/hutch")


class Context:
    """Paths and stores for one invocation; ``--root`` moves everything, so tests never share state."""

    def __init__(self, root: Path | None = None, runroot: Path | None = None) -> None:
        self.root = (root or DEFAULT_ROOT).absolute()
        if runroot is not None:
            self.runroot = runroot.absolute()
        elif root is None or self.root == DEFAULT_ROOT:
            self.runroot = DEFAULT_RUNROOT
        else:
            self.runroot = self.root / "run"

    @cached_property
    def db(self) -> Database:
        from hutch.db import Database

        os.makedirs(self.root, mode=0o711, exist_ok=True)
        return Database(self.root / "hutch.db")

    @cached_property
    def images(self) -> ImageStore:
        from hutch.image.store import ImageStore

        return ImageStore(self.root, self.db)

    @cached_property
    def engine(self) -> Engine:
        from hutch.engine.containers import Engine

        return Engine(self.root, self.db, self.images)

    def containers_using_image(self, image_id: str) -> list[str]:
        """Names of containers made from the image, so ``rmi`` can refuse to pull it from under them."""
        from hutch.engine.records import ContainerRecords

        return ContainerRecords(self.db).using_image(image_id)

    def close(self) -> None:
        """Close the database and forget the objects built on it (before a fork: see engine.monitor)."""
        if "db" in self.__dict__:
            self.db.close()
        for name in ("db", "images", "engine"):
            self.__dict__.pop(name, None)

    def fresh(self) -> Context:
        """A new context with its own database connection, for a forked process."""
        return Context(self.root, self.runroot)
