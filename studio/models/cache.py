"""Loaded models, shared SDXL bases and least-recently-used eviction, for the app and the evaluation runs."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

from .base import SharedBase, env_dtype, load_base
from .errors import MissingWeightsError
from .registry import family_of
from .spec import ModelSpec


class ModelCache:
    """Loaded models, least recently used evicted beyond ``max_models``; models on one SDXL base share it.

    A model's load holds only that model's lock (and its base's while the base loads), so a
    long load never blocks requests to models already loaded.
    """

    def __init__(self, device: str | None = None, max_models: int | None = None, dtype=None,
                 offload: bool | None = None, vae_tiling: bool | None = None):
        self.device = device or os.environ.get("STUDIO_DEVICE") or None
        self.max_models = max_models or int(os.environ.get("STUDIO_MAX_MODELS", "2"))
        self.dtype = dtype or env_dtype()
        self.offload = offload if offload is not None else os.environ.get("STUDIO_OFFLOAD", "") == "model"
        self.vae_tiling = vae_tiling if vae_tiling is not None else os.environ.get("STUDIO_VAE_TILING", "") == "1"
        self._models: OrderedDict[str, object] = OrderedDict()
        self._bases: dict[str, SharedBase] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts only, never held through a load

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def loaded(self) -> list[str]:
        with self._lock:
            return [m.spec.name for m in self._models.values()]

    def get(self, spec: ModelSpec):
        """The loaded model of ``spec`` (loaded now if it is not), called with a face, keypoints and settings."""
        key = repr(spec.weights_key() | {"lcm_lora": spec.lcm_lora})
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        family = family_of(spec)
        missing = family.missing_weights(spec)
        if missing:
            raise MissingWeightsError(f"model '{spec.name}' is missing weights:\n- " + "\n- ".join(missing))
        with self._key_lock(key):
            with self._lock:
                if key in self._models:
                    return self._models[key]
            base = None if self.offload or spec.lora else self._base(spec)  # a LoRA changes its UNet
            model = family.load(spec, self.device, self.dtype, base=base, offload=self.offload,
                                   vae_tiling=self.vae_tiling)
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.max_models:
                    _, old = self._models.popitem(last=False)
                    old.base.models -= 1
                    for k, b in list(self._bases.items()):
                        if b is old.base and b.models <= 0:
                            del self._bases[k]
            return model

    def _base(self, spec: ModelSpec) -> SharedBase:
        key = f"base:{spec.base}"
        with self._lock:
            if key in self._bases:
                return self._bases[key]
        with self._key_lock(key):
            with self._lock:
                if key in self._bases:
                    return self._bases[key]
            base = load_base(spec.base, self.device, self.dtype, self.vae_tiling)
            with self._lock:
                self._bases[key] = base
            return base
