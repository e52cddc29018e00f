"""Where an IP-Adapter-FaceID model's weights are on this machine, what is missing with how to get it,
and the download name it adds."""
from __future__ import annotations

from pathlib import Path

from ..hub import DOWNLOADS, WHERE, hf_command, hub_cached, local_path, looks_local, missing_base
from ..spec import FACEID_REPO, ModelSpec
from .layout import EMBEDDED, FACEID_FILE, FACEID_LORA_FILE

DOWNLOADS.update({"ip-adapter-faceid": [(FACEID_REPO, (FACEID_FILE, FACEID_LORA_FILE))]})


def _local_file(source: str, name: str) -> Path | None:
    """``source`` itself when it is a file, else ``name`` in it (a folder, or a hub id in the cache)."""
    p = local_path(source)
    if p is not None:
        return p if p.is_file() else p / name
    return hub_cached(source, name)


def local_faceid_file(source: str) -> Path | None:
    """The adapter file: ``source`` itself, or ``ip-adapter-faceid_sdxl.bin`` in a folder or cached repo."""
    return _local_file(source, FACEID_FILE)


def local_lora_file(source: str) -> Path | None:
    """The adapter's LoRA: ``source`` itself, or ``ip-adapter-faceid_sdxl_lora.safetensors`` in it."""
    return _local_file(source, FACEID_LORA_FILE)


def missing_weights(spec: ModelSpec) -> list[str]:
    """What of ``spec`` is not on this machine, each with how to get it. Looks, never downloads."""
    base = missing_base(spec.base)
    out = [base] if base else []
    f = local_faceid_file(spec.ip_adapter)
    if f is None or not f.is_file():
        how = (f"{spec.ip_adapter} holds no {FACEID_FILE}" if looks_local(spec.ip_adapter)
               else f"{hf_command(spec.ip_adapter, (FACEID_FILE,))} ({WHERE})")
        out.append(f"IP-Adapter-FaceID '{spec.ip_adapter}': {how}")
    if spec.lora and spec.lora != EMBEDDED:  # an embedded LoRA is in the adapter file
        lf = local_lora_file(spec.lora)
        if lf is None or not lf.is_file():
            how = (f"{spec.lora} holds no {FACEID_LORA_FILE}" if looks_local(spec.lora)
                   else f"{hf_command(spec.lora, (FACEID_LORA_FILE,))} ({WHERE})")
            out.append(f"IP-Adapter-FaceID LoRA '{spec.lora}': {how}")
    return out
