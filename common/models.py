"""The models a process serves: one, or several side by side (SURGE_MODELS), by name."""

from __future__ import annotations

import threading
from pathlib import Path

from common.bundle import ModelBundle
from common.errors import UnknownModel
from common.settings import Settings


class ModelSet:
    """Loads the configured models (all at once, or each on first use) and finds them by name.
    The first is the default (what /v1/predict and a job without a model use)."""

    def __init__(self, settings: Settings, loaded: dict[str, ModelBundle] | None = None):
        self.settings = settings
        self.specs = settings.model_specs()
        self._bundles: dict[str, ModelBundle] = dict(loaded or {})
        self._lock = threading.Lock()
        if loaded:  # given (tests, benchmarks): these are the models, the first the default
            self.specs = [(name, b.path) for name, b in loaded.items()]

    @property
    def default_name(self) -> str:
        """The default model's name (its manifest name when none was configured)."""
        name = self.specs[0][0]
        return name if name is not None else self.get(None).name

    def names(self) -> list[str]:
        """Every model's name, default first (loads an unnamed default to learn its name)."""
        return [name if name is not None else self.get(None).name for name, _ in self.specs]

    def get(self, name: str | None) -> ModelBundle:
        """The model called `name` (None: the default), loaded on first use; UnknownModel
        (404) for a name not configured."""
        spec = self._spec(name)
        key = spec[0] or ""
        with self._lock:
            if key not in self._bundles:
                self._bundles[key] = self._load(*spec)
            return self._bundles[key]

    def load_all(self) -> dict[str, ModelBundle]:
        """Every model, loaded: {name: bundle}, default first."""
        bundles = [self.get(name) for name, _ in self.specs]
        return {b.name: b for b in bundles}

    def _spec(self, name: str | None) -> tuple[str | None, Path | None]:
        if name is None:
            return self.specs[0]
        for spec in self.specs:
            if spec[0] == name or (spec[0] is None and self._known_default() == name):
                return spec
        raise UnknownModel(f"no model named {name!r}", {"model": name,
                                                        "available": self._available()})

    def _known_default(self) -> str | None:
        bundle = self._bundles.get("")
        return bundle.name if bundle else None

    def _available(self) -> list[str]:
        return [n if n is not None else (self._known_default() or "(default)")
                for n, _ in self.specs]

    def _load(self, name: str | None, path: Path | None) -> ModelBundle:
        from common.loader import load_configured

        return load_configured(self.settings, path, name)
