"""``hutch pull``: resolve a reference to one image manifest, download what the store lacks, add it.

Downloads run in a small thread pool (the transfers release the GIL; three is what Docker uses). Each
layer blob streams straight into the blob store's temp file while it is hashed (``Ingest.put_stream``),
and is renamed into place only after its digest and size match the manifest: a tampered or truncated blob
is discarded and nothing is recorded. A connection that breaks mid-blob is resumed with a ``Range``
request from the byte it reached, retrying with back-off for about fifteen seconds (a registry restart),
then the pull fails cleanly. The image is added (layers verified and unpacked, one transaction) only once
every blob is in.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING

from hutch.errors import CorruptContent, HutchError, InvalidArgument, NotFound
from hutch.image.registry.auth import scope_for
from hutch.image.registry.client import Registry, RegistryError
from hutch.image.registry.progress import Progress
from hutch.image.registry.transport import CONNECTION_ERRORS, Unreachable
from hutch.image.store import NewImage
from hutch.oci import image as oci
from hutch.oci import reference
from hutch.oci.digest import Digest, chain_ids

if TYPE_CHECKING:
    from hutch.image.store import Image, ImageStore, Ingest

WORKERS = 3
_CHUNK = 1 << 20
_RESUME_DELAYS = (0.1, 0.3, 0.6, 1.0, 2.0, 3.0, 4.0, 4.0)  # ~15 s: long enough for a registry restart
_MAX_CONFIG = 8 << 20


def parse_platform(text: str | None) -> oci.Platform | None:
    """``os/arch[/variant]`` as ``--platform`` takes it."""
    if not text:
        return None
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f'invalid platform "{text}": expected os/arch[/variant]')
    return oci.Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def _known(media_type: str) -> str | None:
    """The Content-Type of a manifest response when it names a manifest type; registries answer
    ``application/json`` or nothing for documents without ``mediaType``, and then the body decides."""
    return media_type if media_type in oci.MANIFEST_TYPES | oci.INDEX_TYPES else None


class _Aborted(HutchError):
    """A download stopped because another one of the same pull failed (never the error reported)."""


class BlobStream:
    """A blob's bytes from the registry as a readable stream that resumes with Range after a break."""

    def __init__(
        self, registry: Registry, repo: str, desc: oci.Descriptor, scopes, on_bytes, abort=None
    ) -> None:
        self.abort = abort  # a threading.Event: another download failed, stop this one
        self.registry = registry
        self.repo = repo
        self.desc = desc
        self.scopes = scopes
        self.on_bytes = on_bytes
        self.offset = 0
        self._resp = None
        self._failures = 0

    def read(self, n: int = -1) -> bytes:
        remaining = self.desc.size - self.offset
        if remaining <= 0:
            self._finish()
            return b""
        want = min(n if n > 0 else _CHUNK, remaining)
        if self.abort is not None and self.abort.is_set():
            raise _Aborted(f"download of blob {self.desc.digest} stopped: another download failed")
        while True:
            try:
                if self._resp is None:
                    self._open()
                data = self._resp.read(want)
            except (*CONNECTION_ERRORS, Unreachable) as err:
                self._broken(err)
                continue
            if not data:
                self._broken(ConnectionError("connection closed early"))
                continue
            self._failures = 0
            self.offset += len(data)
            self.on_bytes(len(data))
            return data

    def _open(self) -> None:
        resp = self.registry.open_blob(self.repo, str(self.desc.digest), self.scopes, self.offset)
        if resp.status == 200 and self.offset:
            skip = self.offset  # the registry ignored Range: skip what we have (the digest still checks it)
            while skip:
                got = resp.read(min(skip, _CHUNK))
                if not got:
                    raise ConnectionError("connection closed early")
                skip -= len(got)
        self._resp = resp

    def _broken(self, err: BaseException) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        self.registry.transport.discard()
        if self._failures >= len(_RESUME_DELAYS):
            raise Unreachable(
                f"download of blob {self.desc.digest} broke at byte {self.offset} of {self.desc.size} "
                f"and could not be resumed: {err}"
            )
        time.sleep(_RESUME_DELAYS[self._failures])
        self._failures += 1

    def _finish(self) -> None:
        """At the manifest's size: anything more from the registry means the blob is not the one named."""
        if self._resp is not None:
            try:
                extra = self._resp.read(1)
            except CONNECTION_ERRORS:
                extra = b""
            self._resp.close()
            self._resp = None
            if extra:
                self.registry.transport.discard()
                raise CorruptContent(
                    f"blob {self.desc.digest}: registry sent more than {self.desc.size} bytes"
                )


class Puller:
    """Pulls one reference into an image store."""

    def __init__(self, store: ImageStore, registry: Registry, progress: Progress) -> None:
        self.store = store
        self.registry = registry
        self.progress = progress

    def pull(self, ref: reference.Reference, platform: oci.Platform | None = None) -> Image:
        scopes = (scope_for(ref.path, "pull"),)
        if ref.digest is None:
            self.progress.message(f"{ref.tag}: Pulling from {ref.path}")
        top, manifest_bytes, media_type = self._resolve(ref, scopes, platform)
        manifest = oci.parse_manifest(manifest_bytes, media_type)
        config = self._config(ref, manifest.config, scopes)
        names = [str(ref)] if ref.digest is None else []
        names.append(f"{ref.name}@{top}")
        existed = self._has_image(manifest.config.digest)
        diff_ids = oci.config_diff_ids(oci.parse_image_config(config))
        if len(diff_ids) != len(manifest.layers):
            raise CorruptContent(f"image {manifest.config.digest}: manifest and config do not agree")
        layers = list(zip(manifest.layers, chain_ids(diff_ids), diff_ids, strict=True))
        with self.store.ingest() as ing:
            self._download(ing, ref.path, layers, scopes)
            new = NewImage(manifest_bytes, config, names, media_type)
            image = self.store.add_images([new], ingest=ing)[0]
        self.progress.message(f"Digest: {top}")
        status = "Image is up to date" if existed else "Downloaded newer image"
        self.progress.message(f"Status: {status} for {ref.familiar()}")
        return image

    def _has_image(self, config_digest: Digest) -> bool:
        try:
            self.store.resolve(str(config_digest))
            return True
        except NotFound:
            return False

    def _resolve(self, ref, scopes, platform) -> tuple[Digest, bytes, str]:
        """(digest the reference names, the image manifest's bytes, its media type); an index is resolved
        to the entry for ``platform`` (default: this host)."""
        target = str(ref.digest) if ref.digest is not None else ref.tag
        data, media_type = self._manifest(ref, target, scopes, ref.digest)
        top = ref.digest or Digest.of_bytes(data)
        kind = oci.document_media_type(data, _known(media_type), f"manifest {ref.familiar()}")
        if kind in oci.INDEX_TYPES:
            index = oci.parse_index(data, kind, f"index {ref.familiar()}")
            entry = oci.select_manifest(index, platform)
            data, media_type = self._manifest(ref, str(entry.digest), scopes, entry.digest)
            kind = oci.document_media_type(data, _known(media_type), f"manifest {entry.digest}")
        return top, data, kind

    def _manifest(self, ref, target: str, scopes, expected: Digest | None) -> tuple[bytes, str]:
        try:
            data, media_type, header = self.registry.get_manifest(ref.path, target, scopes)
        except RegistryError as err:
            if err.status == 404:
                raise NotFound(
                    f"manifest for {ref.familiar()} not found: {err.code.lower().replace('_', ' ')}"
                )
            raise
        if expected is not None:
            expected.verify_bytes(data, f"manifest {ref.familiar()}")
        elif header:
            try:
                Digest.parse(header).verify_bytes(data, f"manifest {ref.familiar()}")
            except InvalidArgument:
                pass  # a digest algorithm we cannot check; the registry's header is advisory for tags
        return data, media_type

    def _config(self, ref, desc: oci.Descriptor, scopes) -> bytes:
        if self.store.blobs.has(desc.digest):
            try:
                return self.store.blobs.read(desc.digest)
            except HutchError:
                pass
        if desc.size > _MAX_CONFIG:
            raise CorruptContent(f"image config of {ref.familiar()} is too large ({desc.size} bytes)")
        data = self.registry.get_blob(ref.path, str(desc.digest), scopes, desc.size)
        desc.digest.verify_bytes(data, "image config")
        return data

    def _download(self, ing: Ingest, repo: str, layers, scopes) -> None:
        """Every layer blob the store lacks, in parallel, each unpacked by its worker as soon as it is in
        (a layer directory does not depend on the layers below it); the first failure cancels what has
        not started."""
        missing: dict[Digest, list] = {}
        for desc, chain_id, diff_id in layers:
            key = desc.digest.short
            if desc.digest in missing:
                missing[desc.digest].append((desc, chain_id, diff_id))
            elif ing.has(desc.digest):
                self.progress.status(key, "Already exists")
            else:
                self.progress.status(key, "Waiting", desc.size)
                missing[desc.digest] = [(desc, chain_id, diff_id)]
        if not missing:
            return
        abort = threading.Event()
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(missing))) as pool:
            futures = [pool.submit(self._fetch, ing, repo, uses, scopes, abort) for uses in missing.values()]
            try:
                for future in as_completed(futures):
                    future.result()
            except BaseException:
                abort.set()
                for future in futures:
                    future.cancel()
                raise

    def _fetch(self, ing: Ingest, repo: str, uses: list, scopes, abort: threading.Event) -> None:
        desc = uses[0][0]
        key = desc.digest.short
        self.progress.status(key, "Downloading", desc.size)
        stream = BlobStream(self.registry, repo, desc, scopes, lambda n: self.progress.advance(key, n), abort)
        try:
            ing.put_stream(stream, desc.digest, desc.size)
        except CorruptContent:
            self.progress.status(key, "Verification failed")
            raise
        self.progress.status(key, "Download complete")
        self.progress.status(key, "Extracting")
        for layer_desc, chain_id, diff_id in uses:
            ing.unpack_layer(chain_id, diff_id, layer_desc)
        self.progress.status(key, "Pull complete")


def pull(
    store: ImageStore, text: str, registry: Registry, progress: Progress, platform: oci.Platform | None = None
) -> Image:
    """Pull ``text`` (a reference as users type it) from ``registry`` into ``store``."""
    return Puller(store, registry, progress).pull(reference.normalize(text), platform)
