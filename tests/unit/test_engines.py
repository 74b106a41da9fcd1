"""Engines and the chooser: every engine answers like the eager model; the accuracy guard
rejects a broken candidate; a new CPU measures again; serving falls back when OpenVINO is
missing or fails; `model info` shows the choice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import common.chooser as chooser
from common.compiled import GUARD, META, MODEL, PROBES, TOKENIZER, compiled_dir, read_meta
from common.engines import Spec, open_engine
from common.engines.onnx import OnnxEngine
from common.identity import weights_hash
from common.loader import EngineRequest, load_bundle


@pytest.fixture(scope="module")
def eager(default_model_dir: Path):  # type: ignore[no-untyped-def]
    return load_bundle(default_model_dir, compiled=False, warmup=False)


@pytest.fixture(scope="module")
def artifact_copy(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model home holding a copy of the default model's artifact, nothing measured in it."""
    home = tmp_path_factory.mktemp("home")
    source = compiled_dir(weights_hash(default_model_dir))
    target = home / "compiled" / source.name
    target.mkdir(parents=True)
    for name in (META, MODEL, TOKENIZER, GUARD):
        shutil.copy2(source / name, target / name)
    return home


@pytest.fixture
def home(artifact_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of that home per test (records written by one test stay there)."""
    shutil.copytree(artifact_copy, tmp_path / "home", copy_function=os.link)
    monkeypatch.setenv("SURGE_MODEL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(chooser, "START_TEXTS", 64)  # a bounded measurement, fast
    return tmp_path / "home"


def _specs() -> list[Spec]:
    from common.engines.openvino import precisions

    return [Spec("onnx", "fp32", 1, 1)] + [Spec("openvino", p, 2, 1) for p in precisions()]


def test_every_engine_agrees_with_eager_on_the_probes(eager: Any) -> None:
    artifact = compiled_dir(eager.weights)
    meta = read_meta(artifact)
    assert meta is not None
    for spec in _specs():
        engine = open_engine(spec, artifact, meta, eager.max_tokens)
        for texts in PROBES:
            ids = eager.engine.encode(texts)
            assert engine.encode(texts) == ids, spec.label
            want, got = eager.engine.logits(ids), engine.logits(ids)
            assert (got.argmax(-1) == want.argmax(-1)).all(), spec.label
            tolerance = 1e-3 if spec.precision == "fp32" else 0.2  # bf16: 8 mantissa bits
            assert np.allclose(got, want, atol=tolerance), (spec.label, got, want)


def test_streams_run_passes_at_once_with_the_same_answers(eager: Any) -> None:
    """The batcher's N workers call one engine from N threads: answers must not mix."""
    artifact = compiled_dir(eager.weights)
    meta = read_meta(artifact)
    assert meta is not None
    engine = open_engine(Spec("openvino", "fp32", 2, 1), artifact, meta, eager.max_tokens)
    batches = [engine.encode([f"review {i} " * (1 + i % 9)] * (1 + i % 4)) for i in range(24)]
    alone = [engine.logits(b) for b in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(engine.logits, batches))
    for a, b in zip(alone, together, strict=True):
        assert np.allclose(a, b, atol=1e-5)


def test_guard_rule_at_its_edges() -> None:
    reference = [0] * 1000
    gold = [0] * 830 + [1] * 170  # fp32: 83.0% accurate
    for flips, agreed in ((5, True), (6, False)):  # 99.5% passes, 99.4% does not
        m = chooser.Measured(Spec("openvino", "bf16"), labels=[1] * flips + [0] * (1000 - flips))
        chooser.judge(m, reference, None)
        assert m.passed is agreed, m.reason
    # Four more correct answers than fp32 pass; 0.4 points fewer (agreeing 99.6%) do not.
    better = chooser.Measured(Spec("x"), labels=[0] * 996 + [1] * 4)
    chooser.judge(better, reference, [0] * 996 + [1] * 4)
    worse = chooser.Measured(Spec("x"), labels=[1] * 4 + [0] * 996)
    chooser.judge(worse, reference, gold)
    assert better.passed and not worse.passed
    assert "accuracy" in worse.reason


class Broken(OnnxEngine):
    """ONNX Runtime with every 40th text's answer flipped: a lossy candidate (2.5%)."""

    def logits(self, batch_ids: list[list[int]]) -> np.ndarray:
        out = super().logits(batch_ids)
        for row, ids in enumerate(batch_ids):
            if sum(ids) % 40 == 0:
                out[row] = out[row][::-1]
        return out


def test_guard_rejects_a_broken_candidate(default_model_dir: Path, home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Spec("onnx", "int8", 2, 1)

    def candidates(cpus: int, *, full: bool) -> list[Spec]:
        return [Spec("onnx", "fp32", cpus, 1), broken]

    def opener(spec: Spec, artifact: Path, meta: dict[str, Any], max_tokens: int) -> Any:
        if spec == broken:
            plain = open_engine(Spec("onnx", "fp32", 2, 1), artifact, meta, max_tokens)
            assert isinstance(plain, OnnxEngine)
            return Broken(plain.session, plain.tokenizer, plain.pad_id, broken)
        return open_engine(spec, artifact, meta, max_tokens)

    monkeypatch.setattr(chooser, "candidates", candidates)
    monkeypatch.setattr(chooser, "open_engine", opener)
    monkeypatch.setattr(chooser, "MIN_GAIN", 0.0)  # even were it faster, it must lose
    artifact = compiled_dir(weights_hash(default_model_dir))
    meta = read_meta(artifact)
    assert meta is not None
    record = chooser.measure(artifact, meta, full=False)
    verdicts = {c["label"]: c for c in record["candidates"]}
    assert verdicts[broken.label]["passed"] is False
    assert "agree with fp32" in verdicts[broken.label]["reason"]
    assert verdicts["onnx fp32 2x1"]["passed"] is True
    assert record["winner"]["precision"] == "fp32"
    assert chooser.recorded(artifact) == record  # kept with the artifact for this CPU


def test_a_new_cpu_measures_again_then_reuses_its_record(default_model_dir: Path, home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_bundle(default_model_dir, warmup=False)
    assert first.choice["chosen_by"].startswith("measured at start on this CPU")
    other = chooser.cpu_info() | {"model": "Some Other CPU", "flags": ["avx2"]}
    monkeypatch.setattr(chooser, "cpu_info", lambda: other)
    moved = load_bundle(default_model_dir, warmup=False)  # as if the artifact changed hosts
    assert moved.choice["measured"]["cpu"]["model"] == "Some Other CPU"
    assert moved.choice["chosen_by"].startswith("measured at start on this CPU")

    def no_measuring(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured although a record for this CPU exists")

    monkeypatch.setattr("common.loader.measure", no_measuring)
    again = load_bundle(default_model_dir, warmup=False)
    assert again.choice["chosen_by"] == "measured at an earlier start on this CPU"
    choices = json.loads((compiled_dir(first.weights) / chooser.CHOICES).read_text())
    assert len(choices) == 2  # one record per CPU, side by side


def _record_winner(weights: str, spec: Spec) -> None:
    """A record for this CPU naming `spec` the winner (as a compile elsewhere would)."""
    entry = {"spec": spec.as_dict(), "label": spec.label, "texts_per_s": 500.0, "passed": True}
    chooser.save(compiled_dir(weights), {"cpu": chooser.cpu_info(), "mode": "compile",
                                         "winner": spec.as_dict(), "winner_texts_per_s": 500.0,
                                         "candidates": [entry]})


@pytest.mark.parametrize("failure", ["missing", "fails to compile"])
def test_serving_falls_back_when_openvino_is_missing_or_fails(
        default_model_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
        failure: str) -> None:
    weights = weights_hash(default_model_dir)
    _record_winner(weights, Spec("openvino", "fp32", 2, 1))
    chosen = load_bundle(default_model_dir, warmup=False)
    assert (chosen.engine.kind, chosen.choice["chosen_by"]) == (
        "openvino", "measured at compile on this CPU")
    if failure == "missing":
        monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises
    else:
        import openvino

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError("cannot compile for this device")

        monkeypatch.setattr(openvino.Core, "compile_model", refuse)
    bundle = load_bundle(default_model_dir)
    assert (bundle.engine.kind, bundle.precision, bundle.streams) == ("onnx", "fp32", 2)
    assert bundle.choice["chosen_by"].startswith("fallback: openvino fp32 2x1 failed to load")
    assert bundle.identity == chosen.identity  # same precision: the cache stays shared
    forced = load_bundle(default_model_dir, request=EngineRequest(engine="openvino"))
    assert forced.engine.kind == "onnx"  # forced too: still served
    assert bundle.predict(["a warm, funny film"])[0][0][0] == "POSITIVE"


def test_model_info_shows_the_choice(default_model_dir: Path, home: Path) -> None:
    _record_winner(weights_hash(default_model_dir), Spec("onnx", "fp32", 2, 1))
    out = subprocess.run([sys.executable, "-m", "online.cli", "model", "info",
                          str(default_model_dir)], capture_output=True, text=True, check=True,
                         env=os.environ | {"SURGE_LOG_LEVEL": "WARNING"})
    info = json.loads(out.stdout)
    assert info["engine"] | {"measured": None} == {
        "name": "onnx", "precision": "fp32", "streams": 2, "threads": 1, "texts_per_s": 500.0,
        "chosen_by": "measured at compile on this CPU", "measured": None}
    assert info["engine"]["measured"]["cpu"] == chooser.cpu_info()
    assert info["identity"] == f"{info['version']}.t128.fp32"
    assert info["batching"] == {"max_batch": 32, "max_forward_tokens": 512, "max_padding": 0.2,
                                "sorted_padding": 0.2}


def test_a_read_only_artifact_keeps_what_it_measures_and_compiles_in_the_cache_dir(
        default_model_dir: Path, home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime image's artifact is read-only: the choice measured at start and OpenVINO's
    compiled blobs go to SURGE_CACHE_DIR, and the next start measures nothing."""
    import common.compiled as compiled

    artifact = compiled_dir(weights_hash(default_model_dir))
    artifact.chmod(0o555)  # read-only for a non-root server, as in the image
    real = compiled.can_write
    # Root may write anywhere: refuse the artifact's directory as the image's user would.
    monkeypatch.setattr(compiled, "can_write",
                        lambda where: not where.is_relative_to(artifact) and real(where))
    monkeypatch.setenv("SURGE_CACHE_DIR", str(tmp_path / "cache"))
    try:
        first = load_bundle(default_model_dir, warmup=False)
        assert first.choice["chosen_by"].startswith("measured at start on this CPU")
        local = tmp_path / "cache" / "compiled" / artifact.name
        assert chooser.CHOICES in {p.name for p in local.iterdir()}
        assert not (artifact / chooser.CHOICES).exists()
        meta = read_meta(artifact)
        assert meta is not None
        open_engine(Spec("openvino", "fp32", 1, 1), artifact, meta, 128)
        assert list((local / "openvino-cache").iterdir())  # the compiled blob, kept
        assert not (artifact / "openvino-cache").exists()

        def no_measuring(*args: object, **kwargs: object) -> None:
            raise AssertionError("measured again although the cache dir holds the record")

        monkeypatch.setattr("common.loader.measure", no_measuring)
        again = load_bundle(default_model_dir, warmup=False)
        assert again.choice["chosen_by"] == "measured at an earlier start on this CPU"
        assert again.engine.kind == first.engine.kind
    finally:
        artifact.chmod(0o755)


def test_measuring_at_start_is_bounded(default_model_dir: Path, home: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the start budget the challengers are left out; today's engine still runs."""
    monkeypatch.setattr(chooser, "START_BUDGET_S", 0.0)
    bundle = load_bundle(default_model_dir, warmup=False)
    record = chooser.recorded(compiled_dir(bundle.weights))
    assert record is not None
    verdicts = {c["label"]: c for c in record["candidates"]}
    assert verdicts["onnx fp32 2x1"]["passed"] is True
    skipped = [c for label, c in verdicts.items() if label != "onnx fp32 2x1"]
    assert skipped and all("start budget" in c["reason"] for c in skipped)
    assert (bundle.engine.kind, bundle.precision) == ("onnx", "fp32")


def test_openvino_is_imported_without_its_model_converter() -> None:
    """The engine imports openvino without `openvino.tools.ovc` (~0.1 s of a cold start), still
    compiles and runs a model, and leaves the converter importable for whoever wants it."""
    code = """
import sys
import numpy as np
from common.engines.openvino import _openvino
ov = _openvino()
assert "openvino.tools.ovc" not in sys.modules and not hasattr(ov, "convert_model")
from openvino import opset13 as ops
x = ops.parameter([2], np.float32, name="x")
compiled = ov.Core().compile_model(ov.Model([ops.multiply(x, x)], [x]), "CPU")
assert compiled(np.array([3.0, 4.0], np.float32))[0].tolist() == [9.0, 16.0]
from openvino.tools.ovc import convert_model
print("ok", callable(convert_model))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "True"]
