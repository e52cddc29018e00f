"""Finding weights on this machine (a folder, or a hub id already in the hub cache) and fetching them.

What every family shares: the SDXL base, its LCM-LoRA, the ``hf download`` hints and the
``python -m studio models --download`` names that each family adds to.
"""
from __future__ import annotations

from pathlib import Path

from .errors import MissingWeightsError

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
LCM_LORA_SDXL = "latent-consistency/lcm-lora-sdxl"
LORA_FILE = "pytorch_lora_weights.safetensors"


def local_path(path: str) -> Path | None:
    """``path`` as a folder or file on this machine; None when it is not there."""
    p = Path(path).expanduser()
    return p if p.exists() else None


def hub_cached(repo: str, filename: str) -> Path | None:
    """The file from the local hub cache, if a hub id's download is there (never goes online)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(repo, filename)
    except HFValidationError:  # a path that does not exist, not a hub id
        return None
    return Path(found) if isinstance(found, str) else None


def local_base_dir(source: str) -> Path | None:
    """The SDXL base folder (a folder, or a hub id already in the cache), None when it is not on this machine."""
    p = local_path(source)
    if p is not None:
        return p
    cached = hub_cached(source, "model_index.json")
    return cached.parent if cached else None


def lora_file(source: str) -> Path | None:
    p = local_path(source)
    if p is not None:
        return p if p.is_file() else p / LORA_FILE
    return hub_cached(source, LORA_FILE)


def looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") != 1


#: ``hf download`` filters per part, so that only what the studio loads is fetched (SDXL in fp16:
#: about 7 GB instead of the whole repository).
BASE_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*", "text_encoder/config.json",
              "text_encoder_2/config.json", "unet/config.json", "vae/config.json", "text_encoder/model.fp16.safetensors",
              "text_encoder_2/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
              "vae/diffusion_pytorch_model.fp16.safetensors")

#: ``python -m studio models --download NAME``: what each name fetches into the hub cache (each family adds its own).
DOWNLOADS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "sdxl": [(SDXL_BASE, BASE_FILES)],
    "lcm-lora": [(LCM_LORA_SDXL, (LORA_FILE,))],
}


def hf_command(repo: str, files: tuple[str, ...]) -> str:
    return f"hf download {repo} --include " + " ".join(f"'{f}'" for f in files)


#: where a hint's download goes
WHERE = ("into the hub cache ($HF_HOME, where the studio looks), or add --local-dir DIR and register the model "
         "with that folder")


def missing_base(base: str) -> str | None:
    """What is missing of the SDXL base ``base``, with how to get it; None when it is here."""
    found = local_base_dir(base)
    if found is not None and (found / "model_index.json").exists():
        return None
    how = (f"local folder {base} has no model_index.json" if looks_local(base)
           else f"{hf_command(base, BASE_FILES)} ({WHERE}; for {SDXL_BASE}: python -m studio models --download sdxl)")
    return f"SDXL base '{base}': {how}"


def missing_lcm_lora(spec) -> str | None:
    """Why fast mode cannot run for ``spec`` (its LCM-LoRA is not here), or None."""
    f = lora_file(spec.lcm_lora)
    if f is not None and f.is_file():
        return None
    how = (f"{spec.lcm_lora} holds no {LORA_FILE}" if looks_local(spec.lcm_lora)
           else f"{hf_command(spec.lcm_lora, (LORA_FILE,))} (or: python -m studio models --download lcm-lora)")
    return f"fast mode needs the LCM-LoRA '{spec.lcm_lora}' of the SDXL base: {how}"


def download_weights(name: str) -> list[str]:
    """Fetch one of :data:`DOWNLOADS` into the hub cache with huggingface_hub; returns the local folders."""
    from huggingface_hub import snapshot_download

    if name not in DOWNLOADS:
        raise ValueError(f"unknown download {name!r}; choose from {sorted(DOWNLOADS)}")
    folders = []
    for repo, files in DOWNLOADS[name]:
        try:
            folders.append(snapshot_download(repo_id=repo, allow_patterns=list(files)))
        except Exception as exc:  # offline, gated, not found: say what failed and the command to run elsewhere
            raise MissingWeightsError(f"download of {repo} failed ({exc.__class__.__name__}: {str(exc)[:200]}). On a "
                                      f"machine with internet run: {hf_command(repo, files)}") from None
    return folders
