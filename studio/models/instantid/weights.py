"""Where an InstantID model's weights are on this machine, what is missing with how to get it, and the
download names it adds."""
from __future__ import annotations

from pathlib import Path

from ..hub import DOWNLOADS, WHERE, hf_command, hub_cached, local_path, looks_local, missing_base
from ..spec import CROSSFACEID_REPO, INSTANTID_REPO, ModelSpec
from .layout import IDENTITYNET_SUBFOLDER, IP_ADAPTER_FILE, RELEASE_IDENTITYNET_SUBFOLDER, RELEASE_IP_ADAPTER_FILE


def local_identitynet_dir(source: str) -> Path | None:
    """The IdentityNet folder: the source itself, or its ``ControlNetModel/`` (InstantID) or ``controlnet/`` (release)."""
    p = local_path(source)
    if p is not None:
        if (p / "config.json").exists():
            return p
        for sub in (IDENTITYNET_SUBFOLDER, RELEASE_IDENTITYNET_SUBFOLDER):
            if (p / sub / "config.json").exists():
                return p / sub
        return p / IDENTITYNET_SUBFOLDER
    for sub in (IDENTITYNET_SUBFOLDER, RELEASE_IDENTITYNET_SUBFOLDER):
        cached = hub_cached(source, f"{sub}/config.json")
        if cached:
            return cached.parent
    return None


def local_ip_adapter_file(source: str) -> Path | None:
    """``ip-adapter.bin`` (InstantID layout) or ``pytorch_model.bin`` (the paper's release layout)."""
    p = local_path(source)
    if p is not None:
        if p.is_file():
            return p
        for name in (IP_ADAPTER_FILE, RELEASE_IP_ADAPTER_FILE):
            if (p / name).is_file():
                return p / name
        return p / IP_ADAPTER_FILE
    for name in (IP_ADAPTER_FILE, RELEASE_IP_ADAPTER_FILE):
        cached = hub_cached(source, name)
        if cached:
            return cached
    return None


IDENTITYNET_FILES = (f"{IDENTITYNET_SUBFOLDER}/*", f"{RELEASE_IDENTITYNET_SUBFOLDER}/*")
IP_ADAPTER_FILES = (IP_ADAPTER_FILE, RELEASE_IP_ADAPTER_FILE)

DOWNLOADS.update({
    "instantid": [(INSTANTID_REPO, IDENTITYNET_FILES + IP_ADAPTER_FILES)],
    "crossfaceid": [(CROSSFACEID_REPO, IDENTITYNET_FILES + IP_ADAPTER_FILES)],
})


def missing_weights(spec: ModelSpec) -> list[str]:
    """What of ``spec`` is not on this machine, each with how to get it. Looks, never downloads."""
    base = missing_base(spec.base)
    out = [base] if base else []
    cn = local_identitynet_dir(spec.identitynet)
    if cn is None or not (cn / "config.json").exists():
        how = (f"local folder {spec.identitynet} holds no config.json, {IDENTITYNET_SUBFOLDER}/config.json "
               f"(InstantID layout) or {RELEASE_IDENTITYNET_SUBFOLDER}/config.json (CrossFaceID release layout)"
               if looks_local(spec.identitynet) else f"{hf_command(spec.identitynet, IDENTITYNET_FILES)} ({WHERE})")
        out.append(f"IdentityNet '{spec.identitynet}': {how}")
    ip = local_ip_adapter_file(spec.ip_adapter)
    if ip is None or not ip.is_file():
        how = (f"{spec.ip_adapter} holds neither {IP_ADAPTER_FILE} (InstantID layout) nor {RELEASE_IP_ADAPTER_FILE} "
               f"(CrossFaceID release layout)" if looks_local(spec.ip_adapter)
               else f"{hf_command(spec.ip_adapter, IP_ADAPTER_FILES)} ({WHERE})")
        out.append(f"IP-adapter '{spec.ip_adapter}': {how}")
    return out
