"""One frozen Settings object, read from the environment once (prefix SURGE_) and passed down."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    """Every tunable of the service; environment variables are SURGE_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="SURGE_", frozen=True, extra="ignore")

    # all: predictor + jobs API (when SURGE_REDIS_URL is set); jobs: jobs API and CloudEvents
    # sink only, no model loaded (fast cold start for a scale-to-zero ingress).
    role: Literal["all", "jobs"] = "all"

    # Serving. Knative injects PORT; it wins over SURGE_PORT.
    host: str = "0.0.0.0"
    port: int = Field(8080, validation_alias=AliasChoices("PORT", "SURGE_PORT"))
    log_level: str = "INFO"
    log_json: bool = True
    access_log: bool = True
    # Serve well-formed POST /v1/predict requests by a plain route first in the router, without
    # FastAPI's dependency machinery (online/fastpath.py); everything else, errors included,
    # goes through the FastAPI route.
    fast_path: bool = True

    # Model. Unset model_dir means the default bundle built by `surgeserve model build`.
    model_dir: Path | None = None
    model_name: str | None = None
    # Several models side by side: "name=path,name=path" (each any HF sequence-classification
    # directory), parsed once into {name: path}. The default model answers /v1/predict (first
    # listed unless default_model). Unset: one model, SURGE_MODEL_DIR or the default bundle.
    models: Annotated[dict[str, Path] | None, NoDecode] = None
    default_model: str | None = None
    # Where `model build` caches bundles and compiled artifacts live (shared by checkouts).
    model_home: Path = Field(default_factory=lambda: _cache_home() / "surgeserve" / "models")
    # Where a read-only artifact's engine choice and OpenVINO blobs go (local_cache_dir()).
    cache_dir: Path | None = None
    max_tokens: int = Field(128, ge=8, le=4096)
    # The engine (common/engines): auto = the fastest measured on this CPU that passes the
    # accuracy guard (README, Engines); the others force one. Precision likewise.
    engine: Literal["auto", "onnx", "openvino", "transformers"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Model worker threads = engine streams, each running whole batches, and threads per
    # stream. Unset: what was measured fastest (else one stream per usable CPU, one thread).
    model_workers: int | None = Field(None, ge=1, le=64)
    torch_threads: int | None = Field(None, ge=1)
    # Use the verified compiled artifact when one exists for these weights (false: the
    # transformers engine, as SURGE_ENGINE=transformers).
    compiled: bool = True

    # glibc malloc (set before any thread starts; 0 leaves glibc's default). Measured under
    # load (README): arenas 2 + a fixed 1 MiB mmap threshold keep RSS ~440 MB instead of
    # ~530 MB and growing, for ~8% throughput; 256 KiB keeps it flat at ~390 MB for ~20%.
    malloc_arenas: int = Field(2, ge=0)
    mmap_threshold_bytes: int = Field(1 << 20, ge=0)

    # Micro-batching. Unset: the engine's own defaults (measured per engine: README, Engines).
    max_batch_size: int | None = Field(None, ge=1, le=1024)
    # Padded tokens per forward pass: a batch is length-sorted and cut into passes this big.
    max_forward_tokens: int | None = Field(None, ge=16)
    # Padding a forward pass may carry, as a fraction of its real tokens (sorted texts of
    # unlike lengths go in separate passes).
    max_padding: float | None = Field(None, ge=0)
    # Deprecated: SURGE_MAX_WAIT_MS, in milliseconds; still read (with a warning) into
    # max_wait_s, which it must precede (its validator reads this one).
    max_wait_ms: float | None = Field(None, ge=0, le=1000, exclude=True)
    # Hold a non-full batch open this long for company (0: never wait).
    max_wait_s: float = Field(0.0, ge=0, le=1, validate_default=True)
    max_queue: int = Field(1024, ge=1)
    # Shed (503 + Retry-After) a request whose items would wait longer than this behind the
    # queue at the measured model speed, rather than let it queue into a timeout. 0: only the
    # max_queue bound. (make bench, overload at 4x capacity: with only the bound, accepted
    # requests waited 6.5 s at p50.)
    max_queue_wait_s: float = Field(1.0, ge=0)
    request_timeout_s: float = Field(10.0, gt=0)
    retry_after_s: int = Field(1, ge=1)

    # Input limits.
    max_text_chars: int = Field(5000, ge=1)
    bulk_max_items: int = Field(256, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)

    # Cache: SURGE_CACHE=off disables both tiers (for experiments).
    cache: Literal["on", "off"] = "on"
    cache_url: str | None = None
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    lru_size: int = Field(50_000, ge=0)
    cache_timeout_s: float = Field(0.25, gt=0)
    cache_backoff_max_s: float = Field(5.0, gt=0)

    # Jobs Redis (Celery broker and job store), used by the batch path. Unset: no jobs API.
    redis_url: str | None = None
    job_chunk_size: int = Field(256, ge=1, le=10_000)
    job_max_items: int = Field(100_000, ge=1)
    job_max_bytes: int = Field(32 * 1_048_576, ge=1024)
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    # GET /v1/jobs without keys: off, because on a keyless server a job's id is what lets a
    # caller read it, and a list would give every caller every id.
    jobs_list_anonymous: bool = False
    job_queue: str = "surgeserve.chunks"
    # Celery: a chunk must finish well inside the visibility timeout, or Redis hands its
    # unacknowledged message to another worker while the first is still on it.
    chunk_soft_time_limit_s: int = Field(300, ge=1)
    chunk_time_limit_s: int = Field(360, ge=1)
    visibility_timeout_s: int = Field(3600, ge=2)
    chunk_max_retries: int = Field(5, ge=0)
    # Workers look this often (one at a time) for chunks the broker lost (a worker killed
    # between taking a message and recording it) and enqueue them again (jobs younger than
    # this are left alone), put back the messages dead workers held, and send pending end
    # events. 0 turns it off.
    job_sweep_s: float = Field(5.0, ge=0)
    # A worker's heartbeat lives this long unless refreshed (every second): a worker silent
    # this long is dead, and the chunk it held runs again (measured: within ~20 s of a
    # SIGKILL). A live worker's chunk is never taken from it, however long it runs.
    worker_heartbeat_s: float = Field(10.0, ge=2)
    # The worker's Prometheus endpoint (chunk, item and job metrics); 0 turns it off.
    worker_metrics_port: int = Field(9091, ge=0, le=65535)

    # Access. API keys as "name:sha256-of-key" pairs, comma-separated (`surgeserve keys new
    # NAME` makes one), parsed once into {name: hash}; the keys themselves are never stored.
    # Unset: no keys, all open. With keys, jobs belong to the key that made them; health,
    # readiness and metrics stay open.
    api_keys: Annotated[dict[str, str] | None, NoDecode] = None
    predict_auth: Literal["keyed", "open"] = "keyed"  # /v1/predict..., /v2 (with keys set)
    events_auth: Literal["keyed", "open"] = "open"  # /events: the Knative Trigger sends no key
    # Per key (or client address without keys), shared by all replicas through the cache
    # Redis (per replica when there is none): rate_limit_rps tokens/s, bursts up to
    # rate_limit_burst; 0 turns it off.
    rate_limit_rps: float = Field(0.0, ge=0)
    rate_limit_burst: int = Field(20, ge=1)
    # Anonymous CloudEvents (/events, /events/dead-letter without a key) per source address:
    # texts/s and bursts of texts, on by default (the sink is open by default); 0 turns it off.
    events_anon_rate: float = Field(100.0, ge=0)
    events_anon_burst: int = Field(10_000, ge=1)

    # Jobs Redis headroom: new jobs and dead letters are refused (503 jobs_full) while its
    # used memory plus theirs would pass this fraction of its maxmemory (1: never).
    jobs_memory_fraction: float = Field(0.8, gt=0, le=1)
    # Dead letters: the newest dead_letter_keep, each cut to dead_letter_max_bytes of data,
    # kept dead_letter_ttl_s.
    dead_letter_keep: int = Field(1000, ge=1)
    dead_letter_max_bytes: int = Field(16_384, ge=256)
    dead_letter_ttl_s: int = Field(7 * 24 * 3600, ge=1)

    # Connections (online/connections.py). A request's headers must arrive within
    # header_timeout_s of its first byte (of the connection, for the first request); its body
    # within body_timeout_s plus one second per body_min_rate bytes received; an idle
    # keep-alive connection is closed after keep_alive_s. Past max_connections (lowered to fit
    # the file-descriptor limit) a new connection displaces an idle one, else is closed.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    body_min_rate: int = Field(16_384, ge=1)
    keep_alive_s: int = Field(60, ge=1)
    max_connections: int = Field(4096, ge=16)
    # Bodies over large_body_bytes (bulk job uploads) cost ~3x their size in memory while
    # parsed and stored: at most large_body_concurrency at once, others 503 + Retry-After.
    large_body_bytes: int = Field(1_048_576, ge=1024)
    large_body_concurrency: int = Field(2, ge=1)

    # Shutdown: after SIGTERM, wait drain_delay_s with readiness at 503 (so the router stops
    # sending), then let in-flight requests finish for up to shutdown_grace_s.
    drain_delay_s: float = Field(0.0, ge=0)
    shutdown_grace_s: float = Field(30.0, ge=0)

    # Prediction events (common/payload.py): each sampled prediction request (a chunk, for
    # jobs) becomes part of a `dev.surgeserve.prediction` CloudEvent sent to this URL (or,
    # with "k_sink", to the K_SINK a SinkBinding injects). Unset: off. Sent in the background
    # from a bounded queue: a slow or dead sink drops events (counted), never slows a reply.
    payload_sink: str | None = None
    payload_mode: Literal["request", "response", "all"] = "all"
    payload_sample: float = Field(1.0, ge=0, le=1)
    payload_text: bool = False  # the raw text in request/all events (else only its hash)
    # Predictions per CloudEvent, at most (~330 bytes each without the text): each event
    # costs the server a fixed ~0.3 ms, so fewer, larger events cost less (bench_payload).
    payload_batch: int = Field(500, ge=1, le=5000)
    payload_queue: int = Field(10_000, ge=1)  # predictions waiting to be sent, at most

    # Knative runtime contract (no prefix).
    k_service: str = Field("", validation_alias="K_SERVICE")
    k_revision: str = Field("", validation_alias="K_REVISION")
    k_configuration: str = Field("", validation_alias="K_CONFIGURATION")
    k_sink: str | None = Field(None, validation_alias="K_SINK")

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_switch(cls, value: Any) -> Any:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in {"0", "false", "no", "off", "disabled"}:
                return "off"
            if lowered in {"1", "true", "yes", "on", "enabled"}:
                return "on"
        return value

    @field_validator("max_wait_s")
    @classmethod
    def _max_wait_from_ms(cls, value: float, info: ValidationInfo) -> float:
        ms = info.data.get("max_wait_ms")
        if ms is None:
            return value
        if value and value != ms / 1000:
            raise ValueError(f"SURGE_MAX_WAIT_S={value:g} and the deprecated SURGE_MAX_WAIT_MS="
                             f"{ms:g} disagree: set only SURGE_MAX_WAIT_S")
        log.warning("SURGE_MAX_WAIT_MS is deprecated: set SURGE_MAX_WAIT_S=%g instead", ms / 1000)
        return float(ms) / 1000

    @field_validator("payload_sink")
    @classmethod
    def _payload_sink_spec(cls, value: str | None) -> str | None:
        if value and value.strip().lower() != "k_sink" and not re.match(r"https?://[^/]", value):
            raise ValueError("SURGE_PAYLOAD_SINK: an http(s) URL, or k_sink (use K_SINK)")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys_spec(cls, value: Any) -> Any:
        if isinstance(value, Mapping):  # given parsed (code): checked all the same
            value = ",".join(f"{name}:{digest}" for name, digest in value.items())
        return parse_api_keys(value) if isinstance(value, str) else value

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _blank_cache_dir_is_unset(cls, value: Any) -> Any:
        """SURGE_CACHE_DIR= (set but empty) means unset, not the working directory."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("models", mode="before")
    @classmethod
    def _models_spec(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            value = ",".join(f"{name}={path}" for name, path in value.items())
        return parse_models(value) if isinstance(value, str) else value  # ValueError: why

    @field_validator("default_model")
    @classmethod
    def _default_model_listed(cls, value: str | None, info: ValidationInfo) -> str | None:
        models = info.data.get("models")  # validated first: declared before default_model
        if models and value and value not in models:
            raise ValueError(f"SURGE_DEFAULT_MODEL={value!r} is not one of SURGE_MODELS "
                             f"({', '.join(models)})")
        return value

    def model_specs(self) -> list[tuple[str | None, Path | None]]:
        """(name, directory) per configured model, the default first; one (SURGE_MODEL_NAME,
        SURGE_MODEL_DIR) when SURGE_MODELS is unset (None = the default bundle / its manifest
        name)."""
        if not self.models:
            return [(self.model_name, self.model_dir)]
        specs: list[tuple[str | None, Path | None]] = list(self.models.items())
        specs.sort(key=lambda spec: spec[0] != self.default_model)  # stable: else as listed
        return specs

    def model_names(self) -> list[str] | None:
        """The names requests may use, default first; None when only known after loading."""
        names = [n for n, _ in self.model_specs()]
        return None if any(n is None for n in names) else [str(n) for n in names]

    @property
    def payload_url(self) -> str | None:
        """Where prediction events go: SURGE_PAYLOAD_SINK, or K_SINK when it says "k_sink"."""
        if self.payload_sink and self.payload_sink.strip().lower() == "k_sink":
            return self.k_sink or None
        return self.payload_sink or None

    @property
    def cache_enabled(self) -> bool:
        """Whether predictions are looked up in and written to the cache."""
        return self.cache == "on"

    def masked(self) -> dict[str, Any]:
        """The settings as a dict safe to log: passwords in URLs are replaced by ***."""
        out = self.model_dump()
        for key in ("cache_url", "redis_url", "k_sink", "payload_sink"):
            if out.get(key):
                out[key] = mask_url(out[key])
        for key in ("model_dir", "cache_dir"):
            out[key] = str(out[key]) if out[key] else None
        out["model_home"] = str(out["model_home"])
        if out.get("models"):
            out["models"] = {name: str(path) for name, path in out["models"].items()}
        if out.get("api_keys"):  # names only: even hashes stay out of logs
            out["api_keys"] = sorted(out["api_keys"])
        return out

    def warn_shared_redis(self) -> None:
        """One server for both Redis roles is allowed for a quick start, with a warning."""
        if self.cache_url and self.redis_url and self.cache_url == self.redis_url:
            log.warning(
                "SURGE_CACHE_URL and SURGE_REDIS_URL name the same server: the cache wants "
                "allkeys-lru eviction, the job store must never evict. "
                "Use two servers in production."
            )


def parse_api_keys(spec: str) -> dict[str, str]:
    """`"alice:<sha256 hex>,bob:<sha256 hex>"` -> {name: hash}."""
    out: dict[str, str] = {}
    for part in spec.split(","):
        name, sep, digest = part.strip().partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise ValueError(f"SURGE_API_KEYS entry {part.strip()[:20]!r}...: expected "
                             "name:sha256-hex (surgeserve keys new NAME)")
        if not re.fullmatch(r"[0-9a-f]{64}", digest.lower()):
            raise ValueError(f"SURGE_API_KEYS entry for {name!r}: the hash must be 64 hex "
                             "characters (the SHA-256 of the key, never the key)")
        if name in out:
            raise ValueError(f"SURGE_API_KEYS: {name!r} is listed twice")
        out[name] = digest.lower()
    return out


def parse_models(spec: str) -> dict[str, Path]:
    """`"sentiment=/models/a,tiny=/models/b"` -> {name: path}; names are unique, URL-safe."""
    out: dict[str, Path] = {}
    for part in spec.split(","):
        name, sep, path = part.strip().partition("=")
        name = name.strip()
        if not sep or not name or not path.strip():
            raise ValueError(f"SURGE_MODELS entry {part!r}: expected name=path")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
            raise ValueError(f"model name {name!r}: letters, digits, '.', '_', '-' only")
        if name in out:
            raise ValueError(f"model name {name!r} is listed twice")
        out[name] = Path(path.strip())
    return out


def usable_cpus() -> int:
    """CPUs this process may run on (affinity, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def mask_url(url: str) -> str:
    """Hide the password (and a lone token user) of a URL."""
    parts = urlsplit(url)
    if parts.password is None and not parts.username:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    auth = f"{user}:***@" if parts.password is not None else "***@"
    return urlunsplit((parts.scheme, auth + host, parts.path, parts.query, parts.fragment))


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def local_cache_dir() -> Path:
    """Where this machine keeps what it measures and compiles for an artifact whose own
    directory is read-only (a runtime image): SURGE_CACHE_DIR, else the user's cache
    directory when it can be made, else the temp directory (per user). Read where an
    artifact is opened, deep below the server's Settings, as default_model_home is."""
    configured = Settings().cache_dir
    if configured is not None:
        return configured
    base = _cache_home() / "surgeserve"
    try:
        (base / "local").mkdir(parents=True, exist_ok=True)
        if os.access(base / "local", os.W_OK):
            return base / "local"
    except OSError:
        pass
    import tempfile

    return Path(tempfile.gettempdir()) / f"surgeserve-{os.getuid()}"


def default_model_home() -> Path:
    """SURGE_MODEL_HOME as Settings reads it, for callers given no Settings (tests,
    benchmarks); the server passes its settings' model_home down instead."""
    return Settings().model_home
