"""Choose the engine by measurement on the CPU at hand, guarded by accuracy.

Every candidate (engine x precision x streams) runs the artifact's guard texts the way the
server runs traffic: arrival-order batches of the engine's largest batch, each length-sorted
and cut into passes by the engine's own padding rule, `streams` batches at once. That one run
gives both its speed and its answers. A candidate is rejected when its held-out accuracy is
more than 0.3 points below fp32's, or its labels agree with fp32's on fewer than 99.5% of the
texts (fp32 = ONNX Runtime fp32, today's engine, verified against the eager model). The
fastest survivor wins, unless it beats ONNX Runtime fp32 by less than 5% (noise on a shared
machine must not swap engines for nothing). The result is recorded in the artifact per CPU
(model name, the flags that matter, usable cores): another CPU measures again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import platform
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.bundle import _chunks
from common.compiled import GUARD, guard_set, places, read_manifest, writable_dir, write_json
from common.engines import Batching, Engine, Spec, open_engine
from common.settings import usable_cpus

log = logging.getLogger(__name__)

CHOICES = "choices.json"
MAX_ACCURACY_DROP = 0.003  # 0.3 points
MIN_AGREEMENT = 0.995
MIN_GAIN = 1.05  # over ONNX Runtime fp32, or it stays
# The CPU features that change which engine and precision is fastest.
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
         "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
START_TEXTS = 512  # guard texts when measuring at server start (bounded: ~10 s here)
# Wall-clock bound on measuring at server start (before readiness): challengers not yet
# measured when it is spent are left out (ONNX Runtime fp32 always runs: the reference).
START_BUDGET_S = 30.0


def cpu_info() -> dict[str, Any]:
    """This CPU: model name, the flags that matter for the engines, usable cores."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in FLAGS if f in flags], "cpus": usable_cpus()}


def cpu_key(info: dict[str, Any] | None = None) -> str:
    """A short name for this CPU (its choices are recorded under it)."""
    blob = json.dumps(info or cpu_info(), sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=6).hexdigest()


def candidates(cpus: int, *, full: bool) -> list[Spec]:
    """What to measure: ONNX Runtime fp32 first (the baseline), then OpenVINO at every
    precision this CPU computes in. One stream per core, each on one thread; with `full`
    also one stream on every core (and ONNX Runtime's)."""
    layouts = [(cpus, 1)] + ([(1, cpus)] if full and cpus > 1 else [])
    specs = [Spec("onnx", "fp32", s, t) for s, t in layouts]
    try:
        from common.engines.openvino import precisions

        found = precisions()
    except ImportError:
        log.info("openvino is not installed: measuring ONNX Runtime only")
        found = []
    specs += [Spec("openvino", p, s, t) for p in found for s, t in layouts]
    return specs


@dataclass(frozen=True)
class Timing:
    """How long a run took: wall seconds, and CPU seconds of the whole process."""

    texts: int
    wall: float
    cpu: float

    def rate(self, cores: int) -> float:
        """Texts/s these cores give when this process has them to itself: texts per CPU
        second of the process (every engine thread, spin-waits included) times the cores.
        On a shared machine wall time swings 2-3x between rounds as other processes take
        the cores; this stays within ~10% (README, Engines)."""
        return self.texts * cores / max(self.cpu, 1e-9)

    @property
    def wall_rate(self) -> float:
        """Texts per wall second."""
        return self.texts / max(self.wall, 1e-9)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_texts(engine: Engine, texts: list[str], streams: int, batching: Batching, *,
              whole_sorted: bool = False) -> tuple[list[int], Timing]:
    """Answers (label index per text) and timing for `texts` run as the server runs them:
    arrival-order batches of `batching.max_batch`, each sorted and cut by the pass rule,
    `streams` at once. `whole_sorted`: the whole set sorted first (the ceiling, as a job
    chunk runs)."""
    out = [0] * len(texts)
    size = batching.max_batch

    def one(batch: list[int]) -> None:
        ids = engine.encode([texts[i] for i in batch])
        order = sorted(range(len(batch)), key=lambda k: len(ids[k]))
        for chunk in _chunks(order, ids, size, batching.max_forward_tokens, batching.max_padding):
            best = engine.logits([ids[k] for k in chunk]).argmax(axis=-1)
            for k, label in zip(chunk, best.tolist(), strict=True):
                out[batch[k]] = int(label)

    started, cpu = time.perf_counter(), _cpu_seconds()
    if whole_sorted:
        ids = engine.encode(texts)
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        units = _chunks(order, ids, size, batching.max_forward_tokens, batching.sorted_padding)
    else:
        units = [list(range(i, min(i + size, len(texts)))) for i in range(0, len(texts), size)]
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(one, units))
    return out, Timing(len(texts), time.perf_counter() - started, _cpu_seconds() - cpu)


@dataclass
class Measured:
    """One candidate's figures on this CPU."""

    spec: Spec
    rates: list[float] = field(default_factory=list)  # texts/s per round (CPU-time based)
    wall_rates: list[float] = field(default_factory=list)  # texts per wall second per round
    labels: list[int] = field(default_factory=list)
    accuracy: float | None = None
    agreement: float | None = None
    passed: bool = False
    reason: str = ""
    error: str | None = None

    @property
    def texts_per_s(self) -> float:
        """Best of the rounds: interference on a shared machine only ever slows a round."""
        return max(self.rates, default=0.0)

    @property
    def wall_texts_per_s(self) -> float:
        """Best of the rounds, by the wall clock."""
        return max(self.wall_rates, default=0.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (recorded with the artifact)."""
        return {"spec": self.spec.as_dict(), "label": self.spec.label,
                "texts_per_s": round(self.texts_per_s, 1),
                "wall_texts_per_s": round(self.wall_texts_per_s, 1),
                "rounds": [round(r, 1) for r in self.rates], "accuracy": self.accuracy,
                "agreement": self.agreement, "passed": self.passed, "reason": self.reason,
                **({"error": self.error} if self.error else {})}


def judge(m: Measured, reference: list[int], gold: list[int] | None) -> None:
    """The accuracy guard: against fp32's answers, and the held-out labels when known."""
    same = sum(a == b for a, b in zip(m.labels, reference, strict=True))
    m.agreement = round(same / max(1, len(reference)), 5)
    reasons = []
    if m.agreement < MIN_AGREEMENT:
        reasons.append(f"labels agree with fp32 on {m.agreement:.2%} < {MIN_AGREEMENT:.1%}")
    if gold is not None:
        m.accuracy = round(_accuracy(m.labels, gold), 5)
        floor = _accuracy(reference, gold) - MAX_ACCURACY_DROP
        if m.accuracy < floor:
            reasons.append(f"held-out accuracy {m.accuracy:.2%} is more than 0.3 points below "
                           f"fp32's")
    m.passed, m.reason = not reasons, "; ".join(reasons) or "passed"


def _accuracy(labels: list[int], gold: list[int]) -> float:
    return sum(a == b for a, b in zip(labels, gold, strict=True)) / max(1, len(gold))


def load_guard(artifact: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The artifact's guard texts (made and kept now for an artifact compiled before the
    guard existed)."""
    try:
        return dict(json.loads((artifact / GUARD).read_text()))
    except (OSError, ValueError):
        source = Path(str(meta.get("source", "")))
        guard = guard_set(source, read_manifest(source) if source.is_dir() else {})
        write_json(artifact / GUARD, guard)
        return guard


def measure(artifact: Path, meta: dict[str, Any], *, full: bool, max_tokens: int = 128,
            rounds: int | None = None) -> dict[str, Any]:
    """Measure every candidate on this CPU, guard them, pick the winner; record it (with
    the artifact, else under SURGE_CACHE_DIR) and return the record. `full` (at compile):
    all held-out texts, both stream layouts, two rounds; otherwise (at server start) the
    first START_TEXTS, one stream per core, one round, within START_BUDGET_S."""
    started = time.perf_counter()
    guard = load_guard(artifact, meta)
    texts = guard["texts"] if full else guard["texts"][:START_TEXTS]
    labels = list(meta["labels"])
    gold = ([labels.index(g) for g in guard["labels"][: len(texts)]]
            if guard.get("labels") else None)
    rounds = rounds or (2 if full else 1)
    results = [Measured(spec) for spec in candidates(usable_cpus(), full=full)]
    for number in range(rounds):
        # The first round runs every guard text (the answers); later ones time a part.
        # Today's engine goes last: CPU the rest of a starting process burns meanwhile
        # (importing the web stack) counts against a challenger, never for one.
        part = texts if number == 0 else texts[:START_TEXTS]
        for m in reversed(results):
            spent = time.perf_counter() - started > START_BUDGET_S
            if not full and spent and m is not results[0] and m.error is None:
                m.error = f"not measured: the start budget ({START_BUDGET_S:g} s) was spent"
            if m.error is None:
                _round(m, artifact, meta, part, max_tokens, keep_labels=number == 0)
    reference = results[0].labels  # ONNX Runtime fp32
    if not reference:
        raise RuntimeError(f"ONNX Runtime fp32 could not run: {results[0].error}")
    for m in results:
        if m.error is None:
            judge(m, reference, gold)
        else:
            m.reason = f"failed: {m.error}"
    record = _record(results, guard, gold, len(texts), rounds, full,
                     time.perf_counter() - started)
    save(artifact, record)
    return record


def _round(m: Measured, artifact: Path, meta: dict[str, Any], texts: list[str],
           max_tokens: int, *, keep_labels: bool) -> None:
    """One timed pass of `m` over `texts` (its engine opened for the round only: several
    engines held at once would not fit a small pod)."""
    try:
        answers, timing = _timed(open_engine(m.spec, artifact, meta, max_tokens), m.spec,
                                 texts)
    except Exception as exc:  # a candidate that fails is out, not the measurement
        log.warning("candidate %s failed: %s", m.spec.label, exc)
        m.error = f"{type(exc).__name__}: {exc}"[:300]
        return
    finally:
        gc.collect()  # the engine is gone: give its memory back before the next one
    m.rates.append(timing.rate(m.spec.streams * m.spec.threads))
    m.wall_rates.append(timing.wall_rate)
    if keep_labels:
        m.labels = answers


def _timed(engine: Engine, spec: Spec, texts: list[str]) -> tuple[list[int], Timing]:
    run_texts(engine, texts[: engine.batching.max_batch], spec.streams,
              engine.batching)  # warm-up: first passes allocate and compile kernels
    return run_texts(engine, texts, spec.streams, engine.batching)


def _record(results: list[Measured], guard: dict[str, Any], gold: list[int] | None,
            texts: int, rounds: int, full: bool, seconds: float) -> dict[str, Any]:
    baseline = results[0]
    passed = sorted((m for m in results if m.passed), key=lambda m: -m.texts_per_s)
    winner = passed[0] if passed else baseline
    if winner is not baseline and winner.texts_per_s < MIN_GAIN * baseline.texts_per_s:
        winner = baseline
    return {"cpu": cpu_info(), "mode": "compile" if full else "start",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "guard": {"source": guard.get("source"), "texts": texts,
                      "fp32_accuracy": (round(_accuracy(baseline.labels, gold), 5)
                                        if gold else None)},
            "rounds": rounds, "seconds": round(seconds, 1),
            "candidates": [m.as_dict() for m in results],
            "winner": winner.spec.as_dict(), "winner_texts_per_s": round(winner.texts_per_s, 1),
            "baseline_texts_per_s": round(baseline.texts_per_s, 1)}


def recorded(artifact: Path) -> dict[str, Any] | None:
    """What was measured with this artifact on this CPU, if anything: kept with the
    artifact, or (a read-only artifact) under SURGE_CACHE_DIR."""
    for where in places(artifact):
        record = _choices(where).get(cpu_key())
        if isinstance(record, dict):
            return dict(record)
    return None


def save(artifact: Path, record: dict[str, Any]) -> bool:
    """Keep the record for this CPU beside those of other CPUs: with the artifact when it is
    writable, else under SURGE_CACHE_DIR (so a read-only image measures once per machine, not
    at every start). False when nowhere can be written."""
    where = writable_dir(artifact)
    if where is None:
        log.warning("nowhere to keep the engine choice for %s (read-only, and SURGE_CACHE_DIR "
                    "not writable): the next start measures again", artifact)
        return False
    choices = _choices(where)
    choices[cpu_key(record["cpu"])] = record
    return write_json(where / CHOICES, choices)


def _choices(where: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((where / CHOICES).read_text()))
    except (OSError, ValueError):
        return {}


def pick(record: dict[str, Any], *, engine: str = "auto", precision: str = "auto",
         streams: int | None = None) -> tuple[Spec, float] | None:
    """The fastest passing candidate of a record that fits what was asked for (each "auto"
    or None: anything), with its texts/s; the winner when nothing was asked for."""
    if engine == "auto" and precision == "auto" and streams is None:
        winner = Spec.from_dict(record["winner"])
        return winner, float(record.get("winner_texts_per_s", 0.0))
    fits = [c for c in record.get("candidates", [])
            if c.get("passed") and (engine == "auto" or c["spec"]["engine"] == engine)
            and (precision == "auto" or c["spec"]["precision"] == precision)
            and (streams is None or c["spec"]["streams"] == streams)]
    if not fits:
        return None
    best = max(fits, key=lambda c: c["texts_per_s"])
    return Spec.from_dict(best["spec"]), float(best["texts_per_s"])
