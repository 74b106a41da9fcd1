"""The one place a model is loaded and its engine chosen.

Any Hugging Face sequence-classification directory loads. With a verified compiled artifact
for exactly these weights (common/compiled.py) it is served from that, on the engine measured
fastest on this CPU among those that pass the accuracy guard (common/chooser.py): no torch
import, a fast cold start. Without one, transformers serves it. Whatever was chosen, a failure
to load it (OpenVINO missing, a corrupt file) falls back to ONNX Runtime fp32, then to
transformers, saying so in the log and in `model info`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.bundle import ModelBundle
from common.chooser import measure, pick, recorded
from common.compiled import compiled_dir, read_meta, write_json
from common.engines import Engine, Spec, open_engine
from common.engines import torch as torch_engine
from common.errors import ModelNotFound, ModelNotServable
from common.identity import Identity, read_manifest, resolve, weights_stat
from common.settings import Settings, default_model_home, usable_cpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineRequest:
    """What the settings ask of the engine; "auto" / None leave it to the measurement."""

    engine: str = "auto"  # auto | onnx | openvino | transformers
    precision: str = "auto"  # auto | fp32 | bf16
    streams: int | None = None
    threads: int | None = None  # per stream
    measure: bool = True  # measure at load when nothing is recorded for this CPU

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineRequest:
        """SURGE_ENGINE, SURGE_PRECISION, SURGE_MODEL_WORKERS, SURGE_TORCH_THREADS,
        SURGE_COMPILED=false (= transformers)."""
        return cls(engine=settings.engine if settings.compiled else "transformers",
                   precision=settings.precision, streams=settings.model_workers,
                   threads=settings.torch_threads)

    @property
    def automatic(self) -> bool:
        """Nothing asked for: the measured winner."""
        return (self.engine, self.precision, self.streams) == ("auto", "auto", None)

    def layout(self) -> tuple[int, int]:
        """(streams, threads per stream) when nothing measured says otherwise: one stream
        per usable core, one thread each (today's layout)."""
        cpus = usable_cpus()
        streams = self.streams or cpus
        return streams, self.threads or max(1, cpus // streams)


def load_configured(settings: Settings, path: Path | None = None,
                    name: str | None = None) -> ModelBundle:
    """The model in `path` (default: SURGE_MODEL_DIR, else the default bundle) as the settings
    say: name, token limit, engine request."""
    from common.training import default_model_dir

    where = Path(path or settings.model_dir or default_model_dir(home=settings.model_home))
    return load_bundle(where, name=name or settings.model_name, max_tokens=settings.max_tokens,
                       request=EngineRequest.from_settings(settings), home=settings.model_home)


def load_bundle(path: Path, *, name: str | None = None, max_tokens: int = 128,
                request: EngineRequest | None = None, warmup: bool = True,
                compiled: bool = True, home: Path | None = None) -> ModelBundle:
    """Load a local Hugging Face sequence-classification directory (no hub access); its
    compiled artifact is looked for under `home` (Settings.model_home)."""
    started = time.perf_counter()
    path = Path(path)
    request = request or EngineRequest()
    if not compiled:
        request = dataclasses.replace(request, engine="transformers")
    if not (path / "config.json").is_file():
        raise ModelNotFound(
            f"{path} is not a Hugging Face model directory (no config.json)",
            {"hint": "run `surgeserve model build`, or set SURGE_MODEL_DIR"},
        )
    manifest = read_manifest(path)
    identity, artifact, meta = _identify(path, manifest, home)
    bundle = None
    if meta is not None and request.engine != "transformers":
        bundle = _load_compiled(path, manifest, identity, artifact, meta, max_tokens, request)
    elif request.engine != "transformers" and torch_engine.available():
        log.info("no compiled artifact for %s; loading with transformers "
                 "(`surgeserve model compile` makes the next start faster)", identity.weights)
    if bundle is None:
        _refuse_without_eager(path, identity, artifact, meta, request)
        bundle = _load_eager(path, manifest, identity, max_tokens, request)
    if name:
        bundle.name = name
    if warmup:
        bundle.predict(["warm up the model", "x " * bundle.max_tokens])
    bundle.load_seconds = time.perf_counter() - started
    log.info("model loaded", extra={"model": bundle.name, "version": bundle.version,
                                    "engine": bundle.engine.kind, "precision": bundle.precision,
                                    "streams": bundle.streams,
                                    "seconds": round(bundle.load_seconds, 3)})
    return bundle


def _identify(path: Path, manifest: dict[str, Any], home: Path | None,
              ) -> tuple[Identity, Path, dict[str, Any] | None]:
    """The model's identity, its artifact's directory, and the artifact's meta when it was
    compiled from exactly these weights."""
    claimed = str(manifest.get("version") or "")
    home = home or default_model_home()
    hint = read_meta(compiled_dir(claimed, home)) if claimed else None
    identity = resolve(path, manifest, (hint or {}).get("weights"))
    artifact = compiled_dir(identity.weights, home)
    meta = (hint if hint is not None and artifact == compiled_dir(claimed, home)
            else read_meta(artifact))
    if meta is None:
        return identity, artifact, None
    compiled_from = (meta.get("weights") or {}).get("hash") or meta.get("version")
    if compiled_from != identity.weights:
        log.warning("the artifact in %s was compiled from other weights; not used", artifact)
        return identity, artifact, None
    if "weights" not in meta:  # compiled before stats were kept: keep them now (cheap next time)
        meta["weights"] = {"hash": identity.weights, "stat": weights_stat(path)}
        write_json(artifact / "compiled.json", meta)
    return identity, artifact, meta


def plan(artifact: Path, meta: dict[str, Any], request: EngineRequest,
         max_tokens: int) -> tuple[Spec, dict[str, Any]]:
    """The spec to serve with and how it was chosen: the record for this CPU (measured now,
    bounded, when there is none and nothing was forced), filtered by what was asked for."""
    record = recorded(artifact)
    how = "measured at compile on this CPU"
    if record is None and request.automatic and request.measure:
        try:
            record = measure(artifact, meta, full=False, max_tokens=max_tokens)
            how = "measured at start on this CPU (nothing recorded for it)"
        except Exception as exc:
            log.warning("measuring the engines failed (%s): serving ONNX Runtime fp32", exc)
    elif record is not None and record.get("mode") == "start":
        how = "measured at an earlier start on this CPU"
    found = pick(record, engine=request.engine, precision=request.precision,
                 streams=request.streams) if record else None
    info: dict[str, Any] = {}
    if record is not None:
        info["measured"] = {k: record[k] for k in ("cpu", "mode", "measured_at", "guard")
                            if k in record}
    if found is not None:
        spec, rate = found
        if request.threads:
            spec = dataclasses.replace(spec, threads=request.threads)
        return spec, info | {"chosen_by": how if request.automatic else
                             f"asked for, fastest that fits ({how})", "texts_per_s": rate}
    streams, threads = request.layout()
    precision = "fp32" if request.precision == "auto" else request.precision
    engine = request.engine if request.engine != "auto" else (
        "onnx" if precision == "fp32" else "openvino")
    reason = ("asked for; not measured on this CPU" if not request.automatic
              else "nothing measured on this CPU: today's engine")
    return Spec(engine, precision, streams, threads), info | {"chosen_by": reason}


def _load_compiled(path: Path, manifest: dict[str, Any], identity: Identity, artifact: Path,
                   meta: dict[str, Any], max_tokens: int,
                   request: EngineRequest) -> ModelBundle | None:
    spec, choice = plan(artifact, meta, request, max_tokens)
    fallback = Spec("onnx", "fp32", *EngineRequest(streams=request.streams,
                                                   threads=request.threads).layout())
    limit = min(max_tokens, int(meta["max_tokens"]))
    engine: Engine | None = None
    for attempt in [spec] + ([fallback] if fallback != spec else []):
        try:
            engine = open_engine(attempt, artifact, meta, limit)
            break
        except Exception as exc:
            log.warning("engine %s failed to load (%s: %s); falling back", attempt.label,
                        type(exc).__name__, exc)
            choice = {"chosen_by": f"fallback: {attempt.label} failed to load "
                                   f"({type(exc).__name__})", "measured": choice.get("measured")}
    if engine is None:
        log.warning("compiled artifact in %s is unusable; loading with transformers", artifact)
        return None
    return ModelBundle(name=manifest.get("name") or meta["name"], version=identity.version,
                       labels=list(meta["labels"]), lowercase=bool(meta["lowercase"]),
                       max_tokens=limit, path=path, manifest=manifest, engine=engine,
                       weights=identity.weights, choice=choice)


def _refuse_without_eager(path: Path, identity: Identity, artifact: Path,
                          meta: dict[str, Any] | None, request: EngineRequest) -> None:
    """ModelNotServable, saying why, when transformers would serve but is not installed."""
    if torch_engine.available():
        return
    if request.engine == "transformers":
        why = "SURGE_ENGINE=transformers (or SURGE_COMPILED=false) asks for the eager engine"
    elif meta is None:
        why = f"no compiled artifact matches its weights ({identity.weights}; looked in {artifact})"
    else:
        why = f"its compiled artifact ({artifact}) failed to load"
    raise ModelNotServable(
        f"cannot serve {path}: {why}, and transformers (the eager fallback) is not installed",
        {"model_dir": str(path), "weights": identity.weights, "artifact": str(artifact),
         "hint": "compile it where the build tools are (`pip install 'surgeserve[build]'`, or "
                 "the surgeserve-toolchain image): `surgeserve model compile DIR` with the same "
                 "SURGE_MODEL_HOME; or serve a model compiled already"})


def _load_eager(path: Path, manifest: dict[str, Any], identity: Identity, max_tokens: int,
                request: EngineRequest) -> ModelBundle:
    """The transformers path: any sequence-classification directory."""
    streams, threads = request.layout()
    engine = torch_engine.open_engine(path, Spec("transformers", "fp32", streams, threads),
                                      max_tokens)
    asked = request.engine == "transformers"
    return ModelBundle(
        name=manifest.get("name") or path.name, version=identity.version,
        labels=torch_engine.labels_of(engine), lowercase=torch_engine.is_uncased(engine),
        max_tokens=engine.max_tokens, path=path, manifest=manifest, engine=engine,
        weights=identity.weights,
        choice={"chosen_by": "asked for" if asked else "no usable compiled artifact"})
