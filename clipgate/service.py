"""The embedding service: validate and decode a canonical request, batch it, return vectors."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from clipgate import urls
from clipgate.batcher import Batcher, Lane, WorkQueue
from clipgate.canonical import EmbedRequest, EmbedResult, ImageInfo, ImageInput, ModelCard, TextInfo, TextInput
from clipgate.config import Config
from clipgate.cpu_turns import CpuTurns
from clipgate.engine import Encoder, Model
from clipgate.errors import ImageError, InvalidRequest, Overloaded, PayloadTooLarge, UnknownModel
from clipgate.images import Pixels, decode_base64, decode_described, limit_pillow
from clipgate.metrics import Metrics

# A JPEG is decoded at reduced size only while its shortest side stays this many times the model's
# input side: the resize that follows then sees nearly the same pixels (measured: embedding cosine
# >= 0.99999 against a full decode, by tests/test_images.py and the benchmark).
REDUCED_DECODE_MARGIN = 1.5
URL_FETCH_THREADS = 8
# A request whose texts are this short in all (a caption or a few) is tokenized on the event loop:
# ~20 us a caption on 2 cores, where handing it to a pool thread and taking the answer back costs
# the event loop more than that, and a wait for the GIL each way (py-spy under 16 clients: the
# hand-off was a fifth of the event loop's time per text request).
INLINE_TOKENIZE_CHARS = 512


T = TypeVar("T")


def _done(value: T) -> asyncio.Future[T]:
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


class EmbeddingService:
    """Owns the model, the batcher and the decode pool for the life of the app."""

    def __init__(
        self,
        model: Model,
        config: Config,
        *,
        metrics: Metrics | None = None,
        resolver: urls.Resolver = urls.system_resolver,
        queue: WorkQueue | None = None,
    ) -> None:
        """With `queue`, the model runs behind it elsewhere (Ray Serve's split mode: the encoder
        deployment's batcher); this service then only checks, decodes and tokenizes."""
        self.model = model
        self.metrics = metrics or Metrics.disabled()
        self.config = config
        images = config.images
        limit_pillow(images.max_pixels)
        self._resolver = resolver
        self._reduced_decode = images.reduced_jpeg_decode
        self._decode_pool = ThreadPoolExecutor(max_workers=images.decode_threads, thread_name_prefix="clipgate-decode")
        # URL fetches wait on the network: their own threads, so a slow host stalls no decoding.
        self._fetch_pool = ThreadPoolExecutor(max_workers=URL_FETCH_THREADS, thread_name_prefix="clipgate-fetch")
        # On a CPU the model and the decoders take turns (see clipgate.cpu_turns); on a GPU, or
        # with the model in another process, they overlap.
        self.turns = CpuTurns(enabled=model.card.device == "cpu" and queue is None)
        batching = config.batching
        self.batcher: WorkQueue = queue or Batcher(
            {
                "image": Lane(run=self.turns.model(model.embed_images), max_batch=batching.max_batch_images),
                "text": Lane(run=self.turns.model(model.embed_texts), max_batch=batching.max_batch_texts, size=len),
            },
            max_wait_s=batching.max_wait_ms / 1000,
            max_incoming_wait_s=batching.max_wait_incoming_ms / 1000,
            observe=self.metrics.batch_done,
        )

    @property
    def card(self) -> ModelCard:
        return self.model.card

    @property
    def encoder(self) -> Encoder:
        return self.model.encoder

    def start(self) -> None:
        self.batcher.start()

    def health(self) -> str | None:
        """None while this service can serve (batcher running, encoder healthy), else why not."""
        return self.batcher.health() or self.model.encoder.health()

    async def stop(self) -> None:
        await self.batcher.stop()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)

    def check_model(self, requested: str | None) -> None:
        card = self.model.card
        if requested is not None and requested not in (card.alias, card.name):
            raise UnknownModel(f"Model {requested!r} is not served here; this server serves {card.alias!r}.")

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Embed every item of the request, in order. Bad input fails here, before queueing."""
        started = time.perf_counter()
        self.check_model(request.model)
        items = request.items
        if not items:
            raise InvalidRequest("The request holds nothing to embed.")
        texts = [(i, item) for i, item in enumerate(items) if isinstance(item, TextInput)]
        images = [(i, item) for i, item in enumerate(items) if isinstance(item, ImageInput)]
        self._check_sizes(texts, images)
        self._admit("text", len(texts), self.config.server.max_queued_texts)
        self._admit("image", len(images), self.config.server.max_queued_images)
        fetched = await self._all_in(self._fetch_pool, self._fetch, [item for _, item in images], only_urls=True)
        futures: list[asyncio.Future[Any]] = []
        info: list[TextInfo | ImageInfo] = []
        try:
            # Announced to the batcher, so a batch about to start waits for these rather than
            # leaving without them; on a CPU the decoding itself waits while a batch runs
            # (clipgate.cpu_turns). Texts go in as soon as they are tokenized.
            if texts:
                batch = [t for _, t in texts]
                if sum(len(t.text) for t in batch) <= INLINE_TOKENIZE_CHARS:
                    tokens = self._tokenize_now(batch)
                else:
                    with self.batcher.incoming("text", len(texts)):
                        (tokens,) = await self._all_in(self._decode_pool, self._tokenize, [batch])
                futures += self.batcher.submit("text", tokens)
                info += [TextInfo(len(row)) for row in tokens]
            if images:
                with self.batcher.incoming("image", len(images)):
                    decoded = await self._all_in(self._decode_pool, self._decode, fetched)
                futures += self.batcher.submit("image", [pixels for pixels, _ in decoded])
                info += [described for _, described in decoded]
            rows = await asyncio.gather(*futures)
        finally:
            for fut in futures:  # a failed or abandoned request frees its queue places
                fut.cancel()
        vectors: list[Any] = [None] * len(items)
        infos: list[Any] = [None] * len(items)
        for index, row, described in zip([i for i, _ in texts] + [i for i, _ in images], rows, info, strict=True):
            vectors[index], infos[index] = row, described
        return EmbedResult(
            vectors=vectors, elapsed_s=time.perf_counter() - started, info=infos, model=self.model.card.name
        )

    async def embed_prepared(self, lane: str, payloads: Sequence[Any]) -> list[Any]:
        """The rows of work already tokenized or decoded elsewhere (the HTTP replicas of Ray Serve's
        split mode), admitted against this queue's limits and batched with everyone else's."""
        server = self.config.server
        self._admit(lane, len(payloads), server.max_queued_texts if lane == "text" else server.max_queued_images)
        futures = self.batcher.submit(lane, payloads)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for fut in futures:
                fut.cancel()

    @staticmethod
    async def _all_in(
        pool: ThreadPoolExecutor, fn: Callable[[Any], T], args: list[Any], *, only_urls: bool = False
    ) -> list[T]:
        """`fn` over `args` in `pool`, in order. When one fails, the others still waiting for a
        thread are cancelled: a request that has failed leaves no work behind. With `only_urls`,
        only ImageInputs with a URL go to the pool; the rest are at hand."""
        loop = asyncio.get_running_loop()
        jobs: list[asyncio.Future[T]] = []
        try:
            for arg in args:
                in_pool = not only_urls or arg.url is not None
                jobs.append(loop.run_in_executor(pool, fn, arg) if in_pool else _done(fn(arg)))
            return await asyncio.gather(*jobs)
        except BaseException:
            for job in jobs:
                job.cancel()
            raise

    def _admit(self, lane: str, count: int, limit: int) -> None:
        """Refuse work the queue has no room or time for, before any of it is decoded. A request
        is always admitted to an empty queue: one bigger than the queue still runs, alone."""
        if not count:
            return
        pending = self.batcher.pending(lane)
        wait = self.batcher.estimated_wait_s(lane, pending + count)
        retry = max(1, min(60, math.ceil(wait))) if wait is not None else 1
        if pending and pending + count > limit:
            raise Overloaded(
                f"The server has {pending} {lane}s waiting, its limit is {limit}; retry later.", retry_after=retry
            )
        max_wait = self.config.server.max_queue_wait_s
        if pending and wait is not None and wait > max_wait:
            raise Overloaded(
                f"The {lane}s waiting would take about {wait:.0f} s, over the {max_wait:g} s limit; retry later.",
                retry_after=retry,
            )

    def _check_sizes(self, texts: list[tuple[int, TextInput]], images: list[tuple[int, ImageInput]]) -> None:
        """The cheap limits, before any decoding or tokenizing."""
        limits = self.config.server
        for kind, count, limit in (("images", len(images), limits.max_images), ("texts", len(texts), limits.max_texts)):
            if count > limit:
                raise PayloadTooLarge(f"The request holds {count} {kind}; the limit is {limit} per request.")
        for n, (_, item) in enumerate(texts):
            if len(item.text) > limits.max_text_chars:
                raise InvalidRequest(
                    f"Text at index {n} is {len(item.text)} characters long; the limit is {limits.max_text_chars}."
                )
            if item.max_tokens is not None and item.max_tokens < 2:
                raise InvalidRequest(
                    f"Text at index {n} may have at most {item.max_tokens} tokens; CLIP needs at least 2 "
                    "(its start and end tokens)."
                )

    def _fetch(self, item: ImageInput) -> bytes | str:
        """Runs in the fetch pool, outside the CPU turns: an image's bytes, base64 text, or its URL's content."""
        if item.base64 is not None:
            if len(item.base64) > self.config.images.max_bytes * 4 // 3 + 4096:  # line breaks and a data: prefix fit
                raise PayloadTooLarge(f"The image is over the limit of {self.config.images.max_bytes} bytes.")
            return item.base64
        if item.url is not None:
            if not self.config.images.allow_url:
                raise ImageError(
                    "Image URLs are disabled on this server; send the image as base64, or have the "
                    "operator enable them (images.allow_url = true, or CLIPGATE_IMAGES_ALLOW_URL=1)."
                )
            return urls.fetch(item.url, self.config.images, self._resolver)
        assert item.data is not None
        return item.data

    def _tokenize(self, texts: list[TextInput]) -> list[list[int]]:
        """Runs in the decode pool, on the decoders' turn."""
        with self.turns.decoding():
            return self._tokenize_now(texts)

    def _tokenize_now(self, texts: list[TextInput]) -> list[list[int]]:
        ids = self.model.preprocessor.tokenize(texts)
        self.metrics.tokenized([len(row) for row in ids])
        return ids

    def _decode(self, source: bytes | str) -> tuple[Pixels, ImageInfo]:
        """Runs in the decode pool, on the decoders' turn: base64, decode, verify and preprocess one image."""
        with self.turns.decoding():
            started = time.perf_counter()
            data = decode_base64(source) if isinstance(source, str) else source
            reduce_to = math.ceil(REDUCED_DECODE_MARGIN * self.model.card.image_size) if self._reduced_decode else None
            image, described = decode_described(data, self.config.images, reduce_to=reduce_to)
            pixels = self.model.preprocessor.preprocess(image)
        self.metrics.decoded(time.perf_counter() - started)
        return pixels, described
