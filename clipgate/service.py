"""The embedding service: validate and decode a canonical request, batch it, return vectors."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from clipgate import urls
from clipgate.batcher import Batcher, Lane
from clipgate.canonical import EmbedRequest, EmbedResult, ImageInput, ModelCard, TextInput
from clipgate.config import Config
from clipgate.engine import Engine
from clipgate.errors import ImageError, InvalidRequest, PayloadTooLarge, UnknownModel
from clipgate.images import ImageLimits, Pixels, decode_base64, decode_image


class EmbeddingService:
    """Owns the engine, the batcher and the decode pool for the life of the app."""

    def __init__(self, engine: Engine, config: Config, *, resolver: urls.Resolver = urls.system_resolver) -> None:
        self.engine = engine
        self.config = config
        images = config.images
        self._limits = ImageLimits(max_bytes=images.max_bytes, max_pixels=images.max_pixels, formats=images.formats)
        self._url_policy = urls.UrlPolicy(
            allow_http=images.allow_http_url,
            allow_ip_hosts=images.allow_ip_hosts,
            allow_private_addresses=images.allow_private_addresses,
            allow_hosts=images.url_allow_hosts,
            deny_hosts=images.url_deny_hosts,
            timeout_s=images.url_timeout_s,
            max_redirects=images.url_max_redirects,
            max_bytes=images.max_bytes,
        )
        self._resolver = resolver
        self._decode_pool = ThreadPoolExecutor(max_workers=images.decode_threads, thread_name_prefix="clipgate-decode")
        self.batcher = Batcher(
            {
                "image": Lane(run=engine.embed_images, max_batch=config.batching.max_batch_images),
                "text": Lane(run=engine.embed_texts, max_batch=config.batching.max_batch_texts),
            },
            max_wait_s=config.batching.max_wait_ms / 1000,
        )

    @property
    def card(self) -> ModelCard:
        return self.engine.card

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def check_model(self, requested: str | None) -> None:
        card = self.engine.card
        if requested is not None and requested not in (card.alias, card.name):
            raise UnknownModel(f"Model {requested!r} is not served here; this server serves {card.alias!r}.")

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Embed every item of the request, in order. Bad input fails here, before queueing."""
        started = time.perf_counter()
        self.check_model(request.model)
        items = request.items
        if not items:
            raise InvalidRequest("The request holds nothing to embed.")
        texts = [(i, item.text) for i, item in enumerate(items) if isinstance(item, TextInput)]
        images = [(i, item) for i, item in enumerate(items) if isinstance(item, ImageInput)]
        self._check_sizes(texts, images)
        loop = asyncio.get_running_loop()
        tokens = (
            await loop.run_in_executor(self._decode_pool, self.engine.tokenize, [t for _, t in texts]) if texts else []
        )
        pixels = await asyncio.gather(*(self._prepare_image(item) for _, item in images)) if images else []
        futures = self.batcher.submit("text", tokens) + self.batcher.submit("image", pixels)
        try:
            rows = await asyncio.gather(*futures)
        finally:
            for fut in futures:  # a caller that went away frees its queue places
                fut.cancel()
        vectors: list[Any] = [None] * len(items)
        for index, row in zip([i for i, _ in texts] + [i for i, _ in images], rows, strict=True):
            vectors[index] = row
        return EmbedResult(vectors=vectors, elapsed_s=time.perf_counter() - started)

    def _check_sizes(self, texts: list[tuple[int, str]], images: list[tuple[int, ImageInput]]) -> None:
        """The cheap limits, before any decoding or tokenizing."""
        limits = self.config.server
        for kind, count, limit in (("images", len(images), limits.max_images), ("texts", len(texts), limits.max_texts)):
            if count > limit:
                raise PayloadTooLarge(f"The request holds {count} {kind}; the limit is {limit} per request.")
        for n, (_, text) in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise InvalidRequest(
                    f"Text at index {n} is {len(text)} characters long; the limit is {limits.max_text_chars}."
                )

    async def _prepare_image(self, item: ImageInput) -> Pixels:
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, self._decode, item)

    def _decode(self, item: ImageInput) -> Pixels:
        """Runs in the decode pool: fetch (when allowed), decode, verify and preprocess one image."""
        data = item.data
        if item.base64 is not None:
            if (
                len(item.base64) > self._limits.max_bytes * 4 // 3 + 4096
            ):  # newlines and a data: prefix fit in the slack
                raise PayloadTooLarge(f"The image is over the limit of {self._limits.max_bytes} bytes.")
            data = decode_base64(item.base64)
        elif item.url is not None:
            if not self.config.images.allow_url:
                raise ImageError(
                    "Image URLs are disabled on this server; send the image as base64, or have the "
                    "operator enable them (images.allow_url = true, or CLIPGATE_IMAGES_ALLOW_URL=1)."
                )
            data = urls.fetch(item.url, self._url_policy, self._resolver)
        assert data is not None
        return self.engine.preprocess(decode_image(data, self._limits))
