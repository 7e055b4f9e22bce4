"""``hutch push``: upload an image's blobs the registry lacks, then its manifest, bytes unchanged.

For each blob (layers and config, in parallel): ``HEAD`` says whether the repository has it; if not, a
cross-repository mount is tried from another repository of the same registry this image is known by (the
registry links the blob without any transfer); otherwise it is uploaded, in one ``PUT`` when small and in
``PATCH`` chunks when large. The manifest goes last, exactly as stored, so its digest is the one
``hutch pull`` and ``hutch images --digests`` show.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin

from hutch.errors import InvalidArgument
from hutch.image.registry.auth import scope_for
from hutch.image.registry.client import Registry, RegistryError
from hutch.image.registry.progress import Progress
from hutch.oci import image as oci
from hutch.oci import reference

if TYPE_CHECKING:
    from hutch.image.store import ImageStore

WORKERS = 3
CHUNK = 32 << 20  # blobs larger than this go up in chunks of this size


class _Counting:
    """A file slice as an upload body, reporting bytes as http.client reads them."""

    def __init__(self, f, length: int, on_bytes) -> None:
        self.f = f
        self.start = f.tell()
        self.length = self.left = length
        self.on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        self.on_bytes(len(data))
        return data

    def seek(self, _pos: int) -> None:
        """Rewind to the slice's start (a request retried after a 401 or 429 sends it again)."""
        self.f.seek(self.start)
        self.left = self.length


class Pusher:
    """Pushes one image of a store to one repository."""

    def __init__(self, store: ImageStore, registry: Registry, progress: Progress, chunk: int = CHUNK) -> None:
        self.store = store
        self.registry = registry
        self.progress = progress
        self.chunk = chunk

    def push(self, text: str) -> str:
        """Push the image ``text`` names to the repository it names; returns the manifest digest."""
        ref = reference.normalize(text)
        image = self.store.resolve(text)
        manifest = self.store.blobs.read(image.manifest_digest)
        blobs = [
            *self.store.layer_blobs(image),
            oci.parse_manifest(manifest, image.manifest_media_type).config,
        ]
        sources = self._mount_sources(image, ref)
        scopes = (scope_for(ref.path, "pull,push"), *(scope_for(s, "pull") for s in sources[:1]))
        self.progress.message(f"The push refers to repository [{ref.name}]")
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for future in [pool.submit(self._blob, ref.path, b, sources, scopes) for b in blobs]:
                future.result()
        tag = str(ref.digest) if ref.digest is not None else ref.tag
        self.registry.put_manifest(ref.path, tag, manifest, image.manifest_media_type, scopes)
        digest = str(image.manifest_digest)
        self.progress.message(f"{tag}: digest: {digest} size: {len(manifest)}")
        return digest

    def _mount_sources(self, image, ref) -> list[str]:
        """Other repositories on this registry the image is known by: candidates for a mount."""
        paths = []
        for name in [*image.names, *image.digests]:
            other = reference.parse(name)
            if other.domain == ref.domain and other.path != ref.path and other.path not in paths:
                paths.append(other.path)
        return paths

    def _blob(self, repo: str, desc: oci.Descriptor, sources: list[str], scopes) -> None:
        key = desc.digest.short
        digest = str(desc.digest)
        if self.registry.has_blob(repo, digest, scopes):
            self.progress.status(key, "Layer already exists")
            return
        location = None
        for source in sources[:1]:
            location = self.registry.start_upload(repo, scopes, mount=digest, source=source)
            if location is None:
                self.progress.status(key, f"Mounted from {source}")
                return
        self.progress.status(key, "Pushing", desc.size)
        if location is None:
            location = self.registry.start_upload(repo, scopes)
        with self.store.blobs.open(desc.digest, desc.size) as f:
            if desc.size <= self.chunk:
                self._put(location, digest, _Counting(f, desc.size, self._advance(key)), desc.size, scopes)
            else:
                self._chunks(location, digest, f, desc.size, key, scopes)
        self.progress.status(key, "Pushed")

    def _advance(self, key: str):
        return lambda n: self.progress.advance(key, n)

    def _put(self, location: str, digest: str, body, length: int, scopes) -> None:
        """The closing PUT of an upload (with the whole blob for a monolithic one)."""
        sep = "&" if "?" in location else "?"
        resp = self.registry.request(
            "PUT",
            location + sep + urlencode({"digest": digest}),
            scopes=scopes,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            body=body,
            ok=(201, 204),
            what=f"upload of blob {digest}",
        )
        resp.read()

    def _chunks(self, location: str, digest: str, f, size: int, key: str, scopes) -> None:
        """PATCH the blob in ``chunk``-sized pieces, following each new Location, then close it."""
        offset = 0
        while offset < size:
            length = min(self.chunk, size - offset)
            resp = self.registry.request(
                "PATCH",
                location,
                scopes=scopes,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(length),
                    "Content-Range": f"{offset}-{offset + length - 1}",
                },
                body=_Counting(f, length, self._advance(key)),
                ok=(202,),
                what=f"upload of blob {digest}",
            )
            resp.read()
            location = urljoin(self.registry.transport.base + "/", resp.getheader("Location") or location)
            offset += length
        self._put(location, digest, b"", 0, scopes)


def push(store: ImageStore, text: str, registry: Registry, progress: Progress) -> str:
    """Push ``text`` from ``store``; InvalidArgument when it has no tag to push to."""
    try:
        return Pusher(store, registry, progress).push(text)
    except RegistryError as err:
        if err.status == 404:
            raise InvalidArgument(f"push of {text} refused: {err}")
        raise
