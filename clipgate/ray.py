"""clipgate on Ray Serve (`pip install 'clipgate[ray]'`): `serve run clipgate.ray:build model=random:tiny replicas=2`.

The only module that imports ray; plain `clipgate serve` never does. `build` is a Ray application
builder: `serve run` and `serve deploy` (configs/ray/serve.yaml, KubeRay's RayService) hand it
their arguments as one dict.

- **whole** (the default): every replica is a complete clipgate (adapters, limits, decoding,
  batcher, model) built by `create_app`, so every protocol, limit, error shape and metric behaves
  exactly as in one process. Ray places the replicas, restarts them and balances between them.
- **split**: HTTP replicas (adapters, auth, limits, image decode, tokenizing) send uint8 pixels and
  token ids through a `DeploymentHandle` to encoder replicas (clipgate's batcher and the model),
  each pool scaled on its own: for GPU fleets where decoding would starve the GPUs. Ray's own
  errors on that hop (back-pressure, an encoder gone) are answered as clipgate's 503s, in the
  calling vendor's shape.

Arguments (strings from `serve run`, or YAML values from a serve config):

    model=ID            model.id (random:tiny, a checkpoint folder, a Hugging Face id)
    replicas=N|MIN-MAX  HTTP replicas (whole mode: gateways); MIN-MAX autoscales on queue load
    mode=whole|split
    config=FILE         a clipgate TOML file (configs/default.toml); CLIPGATE_* variables apply too
    num_cpus=X          Ray CPUs per replica, and the model's threads (Ray's CPUs are only logical)
    num_gpus=X          GPUs per model replica, fractions allowed (0.5: two replicas share one GPU)
    encoder_replicas=N|MIN-MAX   split mode: encoder replicas
    section.key=VALUE   any key of the configuration, e.g. batching.max_batch_images=16
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from ray import serve
from ray.exceptions import RayError
from ray.serve import Application, Deployment
from ray.serve.exceptions import BackPressureError, RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.applications import Starlette

from clipgate.app import create_app, load_app_config
from clipgate.canonical import ModelCard
from clipgate.config import ENV_PREFIX, SECTIONS, Config, ConfigError
from clipgate.engine import Model, Preprocessor, TokenIds, Vectors, load_model
from clipgate.errors import ClipgateError, InternalError, NotReady, Overloaded
from clipgate.images import ImageTransform, Pixels
from clipgate.service import EmbeddingService
from clipgate.state import AppState

log = logging.getLogger("clipgate.ray")

ARGS = ("model", "replicas", "mode", "config", "num_cpus", "num_gpus", "encoder_replicas")
MODES = ("whole", "split")
GATEWAY, ENCODER = "clipgate", "clipgate-encoder"

# Ray passes each replica at most `max_ongoing_requests` requests and queues the rest in its proxy,
# where clipgate cannot see them (Ray's default, 5, would also cap every batch at 5 requests). Set
# above clipgate's own `server.max_inflight_requests`, so clipgate sees every request it may have to
# refuse and answers overload itself, at once, in the vendor's shape (503 + Retry-After, 429 on
# Azure); the headroom is for probes and info routes, which clipgate does not count.
ONGOING_HEADROOM = 64
# Ray's own queue limit (per proxy or handle) stays as a safety net, reached only when every replica
# already holds more requests than clipgate admits; Ray answers it with a plain-text 503.
QUEUED_PER_REPLICA = 2
# A replica being stopped gets this long beyond a request's deadline to finish the requests in flight.
SHUTDOWN_MARGIN_S = 5.0
# Autoscaling (replicas=MIN-MAX) aims at this many requests in flight per replica, Ray's measure of
# queue load: about half a batch waiting behind the one running.
TARGET_ONGOING = 16


@dataclass(frozen=True)
class Replicas:
    """A fixed count, or autoscaling between `low` and `high` on Ray's ongoing-requests metric."""

    low: int
    high: int

    @classmethod
    def parse(cls, key: str, value: object) -> Replicas:
        text = str(value).strip()
        low, sep, high = text.partition("-")
        try:
            replicas = cls(int(low), int(high) if sep else int(low))
        except ValueError:
            raise ConfigError(f"{key} must be a count (2) or a range to autoscale in (1-4), got {value!r}") from None
        if not 1 <= replicas.low <= replicas.high:
            raise ConfigError(f"{key} must be at least 1, and a range low-high with low <= high, got {value!r}")
        return replicas

    def options(self) -> dict[str, Any]:
        if self.low == self.high:
            return {"num_replicas": self.low}
        return {
            "autoscaling_config": {
                "min_replicas": self.low,
                "max_replicas": self.high,
                "target_ongoing_requests": TARGET_ONGOING,
            }
        }


@dataclass(frozen=True)
class Settings:
    """What `build` was asked for: clipgate's configuration and how Ray runs it."""

    config: Config
    mode: str = "whole"
    replicas: Replicas = Replicas(1, 1)
    encoder_replicas: Replicas = Replicas(1, 1)
    num_cpus: float = 1.0
    num_gpus: float = 0.0


def _number(key: str, value: object, *, low: float) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if not (number >= low and math.isfinite(number)):
        raise ConfigError(f"{key} must be at least {low:g}, got {value!r}")
    return number


def _env_text(value: object) -> str:
    """A serve config's YAML value as the CLIPGATE_* variable that carries it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _overrides(args: Mapping[str, Any], known: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, str]]:
    """Dotted keys (`batching.max_batch_images=16`) as the CLIPGATE_* variables that set them
    (name -> (dotted key, value)), so they are typed and checked exactly as the environment is.
    An unknown key is an error that names the closest known one."""
    every = [f"{section}.{key}" for section, keys in known.items() for key in keys]
    environ: dict[str, tuple[str, str]] = {}
    for name, value in args.items():
        if name in ARGS:
            continue
        section, dot, key = name.partition(".")
        if not dot or key not in known.get(section, ()):
            close = difflib.get_close_matches(name, [*ARGS, *every], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"unknown argument {name!r}: pass {', '.join(ARGS)}, or a configuration key as section.key "
                f"(configs/default.toml){hint}"
            )
        environ[f"{ENV_PREFIX}{section}_{key}".upper()] = (name, _env_text(value))
    return environ


def parse_args(args: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """`build`'s arguments -> Settings, through clipgate's own config loading and validation: the
    file (`config=`), then CLIPGATE_* variables, then the arguments. Raises ConfigError."""
    defaults = load_app_config()
    tables = {name: getattr(defaults, name) for name in SECTIONS} | dict(defaults.protocols)
    known = {name: [f.name for f in dataclasses.fields(table)] for name, table in tables.items()}
    merged = {k: v for k, v in (os.environ if environ is None else environ).items() if k.startswith(ENV_PREFIX)}
    overrides = _overrides(args, known)
    if args.get("model") is not None:
        overrides[f"{ENV_PREFIX}MODEL_ID"] = ("model", str(args["model"]))
    merged.update({variable: value for variable, (_, value) in overrides.items()})
    config_file = args.get("config")
    try:
        config = load_app_config(str(config_file) if config_file is not None else None, merged)
    except ConfigError as exc:  # name the argument, not the variable it travelled in
        message = str(exc)
        for variable, (name, _) in overrides.items():
            message = message.replace(variable, name)
        raise ConfigError(message) from exc
    mode = str(args.get("mode", "whole"))
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    num_cpus = _number("num_cpus", args.get("num_cpus", 1), low=0)
    num_gpus = _number("num_gpus", args.get("num_gpus", 0), low=0)
    if config.model.torch_threads == 0 and num_cpus >= 1:
        # Ray's num_cpus is a scheduling label only: nothing stops torch from starting a thread per
        # core of the node, and replicas sharing a node would then fight over every core.
        config = config.replace("model", torch_threads=int(num_cpus))
    return Settings(
        config=config,
        mode=mode,
        replicas=Replicas.parse("replicas", args.get("replicas", 1)),
        encoder_replicas=Replicas.parse("encoder_replicas", args.get("encoder_replicas", 1)),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )


@contextlib.contextmanager
def local_cluster(cpus: int, port: int, environ: Mapping[str, str] | None = None) -> Iterator[None]:
    """A private Ray cluster on this machine, with Serve's proxy on 127.0.0.1:`port`, for tests and
    benchmarks; stopped and its folder removed on exit. `address="local"`: never another cluster
    that happens to run here. Its own short temp folder (Ray's socket paths live under it), no
    dashboard, no usage stats, and no token auth: with it, Ray writes a token to ~/.ray/auth_token,
    which every other Ray client on the machine then picks up. Ray's internal ports (GCS, raylet)
    still listen on all interfaces, whatever the node address. `environ` is set while the cluster
    runs: its processes read it as they start."""
    import ray

    temp = tempfile.mkdtemp(prefix="cgray", dir="/tmp")
    settings = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **(environ or {})}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp,
        )
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            yield
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp, ignore_errors=True)


def deployment_options(config: Config, replicas: Replicas, actor: Mapping[str, float]) -> dict[str, Any]:
    """Ray's settings for a clipgate deployment, and why (see also the module's constants)."""
    server = config.server
    ongoing = server.max_inflight_requests + ONGOING_HEADROOM
    return {
        **replicas.options(),
        "max_ongoing_requests": ongoing,
        "max_queued_requests": QUEUED_PER_REPLICA * ongoing * replicas.high,
        # Ray force-kills a stopping replica after this; its requests get their own deadline first.
        "graceful_shutdown_timeout_s": server.request_timeout_s + SHUTDOWN_MARGIN_S,
        # check_health below is liveness: Ray replaces a replica after 3 failed checks in a row.
        "health_check_period_s": 10.0,
        "health_check_timeout_s": 30.0,
        "ray_actor_options": dict(actor),
    }


def build(args: dict[str, Any]) -> Application:
    """The Ray Serve application (`serve run clipgate.ray:build key=value ...`)."""
    settings = parse_args(args)
    config = settings.config
    cpus = {"num_cpus": settings.num_cpus}
    if settings.mode == "whole":
        options = deployment_options(config, settings.replicas, cpus | {"num_gpus": settings.num_gpus})
        return _deployment(Gateway).options(name=GATEWAY, **options).bind(config)
    encoder_options = deployment_options(config, settings.encoder_replicas, cpus | {"num_gpus": settings.num_gpus})
    encoder = _deployment(Encoder).options(name=ENCODER, **encoder_options).bind(config)
    gateway_options = deployment_options(config, settings.replicas, cpus)
    return _deployment(Gateway).options(name=GATEWAY, **gateway_options).bind(config, encoder)


def _deployment(decorated: object) -> Deployment:
    """A class below as what @serve.deployment made of it (its stubs keep the class's type)."""
    assert isinstance(decorated, Deployment)
    return decorated


def _replica_name() -> str:
    """The replica's id in Ray (`clipgate#k3x9a2`), for X-Clipgate-Replica and /info."""
    context = serve.get_replica_context()
    return f"{context.deployment}#{context.replica_id.unique_id}"


def _raise_unless_healthy(service: EmbeddingService | None) -> None:
    if service is None:
        raise RuntimeError("clipgate has no model service (stopped, or its load failed)")
    reason = service.health()
    if reason is not None:
        raise RuntimeError(f"clipgate is not healthy: {reason}")


@serve.deployment
@serve.ingress()
class Gateway:
    """An HTTP replica: a whole clipgate, or (with an encoder handle) its HTTP and decode half."""

    def __init__(self, config: Config, encoder: DeploymentHandle[Any] | None = None) -> None:
        self._config = config
        self._encoder = encoder

    async def __serve_build_asgi_app__(self) -> Starlette:
        """Called by Ray on each replica after __init__. The lifespan (run by Ray before the replica
        counts as started) loads and warms the model, or in split mode reaches an encoder; a
        failure fails the replica, which Ray retries and finally reports as a failed deploy."""
        config = self._config
        if not config.server.replica_id:
            config = config.replace("server", replica_id=_replica_name())
        if self._encoder is None:
            return create_app(config, wait_ready=True)
        card, preprocessor = await self._encoder.setup.remote()
        preprocessor.transform = CropOnly.of(preprocessor.transform)
        model = Model(preprocessor, RemoteEncoder(card))
        return create_app(config, model, wait_ready=True, queue=RemoteQueue(self._encoder))

    def check_health(self) -> None:
        """Liveness, every health_check_period_s: the batcher runs and the encoder is healthy."""
        state: AppState = self.app.state.clipgate  # type: ignore[attr-defined]
        _raise_unless_healthy(state.service)


# --- split mode: the encoder deployment, and the HTTP side's view of it ---------------------------------


@dataclass(frozen=True)
class RemoteError:
    """A refusal or failure on an encoder replica, sent back as data (Ray would wrap an exception)."""

    kind: str  # overloaded, not_ready, or internal
    message: str
    retry_after: int | None = None

    @classmethod
    def of(cls, err: ClipgateError) -> RemoteError:
        kind = "overloaded" if isinstance(err, Overloaded) else "not_ready" if isinstance(err, NotReady) else "internal"
        return cls(kind, err.message, err.retry_after)

    def error(self) -> ClipgateError:
        if self.kind == "overloaded":
            return Overloaded(self.message, retry_after=self.retry_after)
        if self.kind == "not_ready":
            return NotReady(self.message, retry_after=self.retry_after)
        return InternalError()


@serve.deployment
class Encoder:
    """An encoder replica: clipgate's batcher and the model, fed by the HTTP replicas' handles."""

    def __init__(self, config: Config) -> None:
        # Loaded and warmed before the replica counts as started; a failure fails the replica.
        self._model = load_model(config.model)
        self._model.encoder.warmup()
        # Its batcher starts on the first call, on the loop that serves the calls.
        self._service = EmbeddingService(self._model, config)
        self._started = False
        self._transform = self._model.preprocessor.transform

    def setup(self) -> tuple[ModelCard, Preprocessor]:
        """What the HTTP replicas need to check, tokenize and decode: the card and the preprocessor."""
        return self._model.card, self._model.preprocessor

    async def embed(self, lane: str, payload: Any) -> Vectors | RemoteError:
        """Rows for one request's texts (token id lists) or images (uint8, n x H x W x 3)."""
        if not self._started:
            self._service.start()
            self._started = True
        try:
            items = [self._transform.normalize(p) for p in payload] if lane == "image" else payload
            rows = await self._service.embed_prepared(lane, items)
            return np.stack(rows).astype(np.float32, copy=False)
        except ClipgateError as err:
            return RemoteError.of(err)
        except Exception:  # noqa: BLE001 - the traceback stays here; the caller gets a 500 as in one process
            log.exception("%s batch failed", lane)
            return RemoteError("internal", "internal error")

    def check_health(self) -> None:
        if self._started:
            _raise_unless_healthy(self._service)
        elif (reason := self._model.encoder.health()) is not None:
            raise RuntimeError(reason)


class CropOnly(ImageTransform):
    """The HTTP replicas' image transform in split mode: resize and crop to uint8; the encoder
    replica normalizes (the same arithmetic, so the same vectors as one process)."""

    @classmethod
    def of(cls, transform: ImageTransform) -> CropOnly:
        return cls(**dataclasses.asdict(transform))

    def __call__(self, image: Any) -> Pixels:
        return np.ascontiguousarray(self.crop(image))


class RemoteEncoder:
    """The encoder as the HTTP replicas see it in split mode: its card; the model runs elsewhere."""

    def __init__(self, card: ModelCard) -> None:
        self._card = card

    @property
    def card(self) -> ModelCard:
        return self._card

    def embed_texts(self, ids: TokenIds, mask: TokenIds) -> Vectors:
        raise RuntimeError("split mode: texts are embedded by the encoder deployment")

    def embed_images(self, pixels: NDArray[np.float32]) -> Vectors:
        raise RuntimeError("split mode: images are embedded by the encoder deployment")

    def warmup(self) -> None:
        """The encoder replicas warmed up before they started."""

    def health(self) -> str | None:
        return None


class RemoteQueue:
    """The service's queue in split mode: each request's tokenized texts or decoded images go to
    an encoder replica in one call, and are batched there with every other HTTP replica's."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle
        self._pending = {"image": 0, "text": 0}
        self._calls: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)

    @contextlib.contextmanager
    def incoming(self, lane: str, count: int) -> Iterator[None]:
        yield  # the encoder's batcher cannot wait for work it has not been sent

    def pending(self, lane: str) -> int:
        """Items this replica has sent and not had back: its own admission limit."""
        return self._pending[lane]

    def estimated_wait_s(self, lane: str, entries: int) -> float | None:
        return None  # the encoder replicas estimate their own waits, and refuse work past the limit

    def run_on_model_thread(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(None, fn)

    def health(self) -> str | None:
        return None

    def submit(self, lane: str, payloads: Sequence[Any]) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in payloads]
        data = np.stack(payloads) if lane == "image" else [list(row) for row in payloads]
        response = cast(DeploymentResponse[Any], self._handle.embed.remote(lane, data))
        self._pending[lane] += len(payloads)

        def abandoned(_: asyncio.Future[Any]) -> None:
            if all(f.cancelled() for f in futures):  # the caller went away or ran out of time
                response.cancel()  # type: ignore[no-untyped-call]

        for future in futures:
            future.add_done_callback(abandoned)
        task = loop.create_task(self._settle(lane, response, futures))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return futures

    async def _settle(self, lane: str, response: DeploymentResponse[Any], futures: list[asyncio.Future[Any]]) -> None:
        try:
            reply = await response
            outcome: ClipgateError | Any = reply.error() if isinstance(reply, RemoteError) else reply
        except (RequestCancelledError, asyncio.CancelledError):
            outcome = NotReady("The request was cancelled.")
        except BackPressureError:
            outcome = Overloaded("Every encoder replica is at its queue limit; retry later.", retry_after=1)
        except RayError as exc:  # an encoder replica died, or none is running: as an unready server
            log.warning("encoder call failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            outcome = NotReady("No encoder replica could take the request; retry later.", retry_after=1)
        except Exception:  # noqa: BLE001 - anything else is ours: a 500, the traceback to the log
            log.exception("encoder call failed")
            outcome = InternalError()
        finally:
            self._pending[lane] -= len(futures)
        for i, future in enumerate(futures):
            if future.done():
                continue
            if isinstance(outcome, ClipgateError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[i])
