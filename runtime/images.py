"""Images sent with goals: stored once in a JetStream object store, referred to by key.

A task's events stay small (NATS carries 1 MB a message by default, and every stored event is
delivered to every gateway): the gateway puts each image in the object store ``victoria_images``
under the SHA-256 of its bytes, the submission and the model requests carry only those keys, and
the runner reads the bytes back when it builds a model request. The same image sent twice is
stored once. Images are kept 7 days, as long as an ``Idempotency-Key``.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from typing import Final

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from victoria.errors import ImageMissing
from victoria.events import subjects

TTL: Final = 7 * 86_400.0  # seconds an image is kept
MAX_IMAGES: Final = 5  # images one goal may carry
MAX_IMAGE_BYTES: Final = 8 * 1024 * 1024  # bytes of one image, decoded
CACHED: Final = 16  # images a runner keeps in memory, most recently used


def image_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageStore:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._store: ObjectStore | None = None
        self._cache: OrderedDict[str, str] = OrderedDict()

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            self._store = await self.js.object_store(subjects.IMAGES_BUCKET)
        return self._store

    async def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its key."""
        store = await self._bucket()
        key = image_key(data)
        try:
            await store.get_info(key)
        except NotFoundError:
            await store.put(key, data)
        return key

    async def base64_of(self, key: str) -> str:
        """The image's bytes in base64, as model servers take them."""
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        store = await self._bucket()
        try:
            found = await store.get(key)
        except NotFoundError:
            raise ImageMissing(key) from None
        encoded = base64.b64encode(found.data or b"").decode("ascii")
        self._cache[key] = encoded
        while len(self._cache) > CACHED:
            self._cache.popitem(last=False)
        return encoded
