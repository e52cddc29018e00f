"""Training runs: a run of kind ``train`` starts ``accelerate launch training/train_instantid.py``.

The studio does not launch processes per GPU or per machine itself: accelerate does (its command
line, or one of the configs in ``training/configs``). This module builds that command as an
argument list (never a shell string), watches the script's ``metrics.jsonl`` for progress, turns a
cancel into the script's ``STOP`` file (it checkpoints and exits), keeps one training run per GPU
set, and registers the finished weights as a Generate-tab model.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..models.spec import INSTANTID
from ..runs.settings import RunSettings
from ..store import RunRow
from ..workspace import Workspace, writable_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "train_instantid.py"
CONFIGS = REPO / "training" / "configs"
PRECISIONS = ("no", "fp16", "bf16")


class TrainingError(ValueError):
    """A training run that could not start or did not finish; the message says why."""


def gpus() -> list[dict]:
    """The CUDA GPUs this machine has: index, name, memory."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "memory_gb": p.total_memory / 2 ** 30})
    return out


def accelerate_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIGS.glob("*.yaml"))}


#: the form's settings on a machine without a GPU: what can finish there (tiny models)
CPU_DEFAULTS = {"devices": "cpu", "precision": "no", "resolution": 256, "batch_size": 1}
#: seconds a stopped run has to save its checkpoint and exit before its processes are killed (mid-step)
STOP_GRACE_S = 10.0


def machine_defaults() -> dict:
    """Training settings that fit this machine: the dataclass's own with a GPU, CPU_DEFAULTS without."""
    return {} if gpus() else dict(CPU_DEFAULTS)


def recipes() -> list[str]:
    """The recipes in training/recipes (``--recipe NAME``)."""
    return sorted(p.stem for p in (REPO / "training" / "recipes").glob("*.yaml"))


@dataclass
class TrainConfig(RunSettings):
    """What a training run is asked to do; stored with the run and shown in its history."""

    KIND = "train"
    LABEL = "training"

    name: str
    model: str = "InstantID"
    start: str = "model"  # model: its IdentityNet + IP-adapter; base: fresh adapter, IdentityNet from the UNet
    manifest: str | None = None  # a pair manifest; None: write the workspace's train split manifest first
    validation_manifest: str | None = None
    captions: str = "approved"
    missing_caption: str = "skip"
    learning_rate: float = 1e-5
    max_steps: int = 1000
    batch_size: int = 2
    gradient_accumulation: int = 1
    resolution: int = 512
    precision: str = "bf16"
    devices: str = "all"  # all | cpu | comma-separated GPU indices
    accelerate_config: str | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validation_every: int = 0
    seed: int = 0
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    encode_in_loop: bool = False
    recipe: str = ""  # training/recipes/<name>.yaml (crossfaceid: the paper's); its values are applied at submit
    crop: str = "face"  # random (the official trainer's) | center | face
    epochs: int = 0  # passes over the manifest (0: max_steps decides)
    face_candidates: bool = False  # a written manifest lists every paired face; one drawn per epoch
    report_to: str = "none"  # none | tensorboard | wandb | all
    extra: list[str] = field(default_factory=list)  # further script arguments, passed as they are

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """From `python -m studio train`: the options, and what follows ``--`` as the script's extra options."""
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in vars(args).items() if k in names and v is not None}
        values["extra"] = [a for a in (args.extra or []) if a != "--"]
        return cls.from_dict(values)

    def validate(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not re.fullmatch(r"[\w.-]{1,64}", self.name):
            problems.append(f"name must be 1-64 letters, digits, '.', '-' or '_'; got {self.name!r}")
        if self.start not in ("model", "base"):
            problems.append(f"start must be 'model' or 'base', got {self.start!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for label, v, lo in (("max_steps", self.max_steps, 1), ("batch_size", self.batch_size, 1),
                             ("gradient_accumulation", self.gradient_accumulation, 1),
                             ("checkpoint_every", self.checkpoint_every, 1), ("keep_checkpoints", self.keep_checkpoints, 1),
                             ("validation_every", self.validation_every, 0)):
            if not isinstance(v, int) or v < lo:
                problems.append(f"{label} must be a whole number >= {lo}, got {v!r}")
        if not isinstance(self.resolution, int) or self.resolution < 64 or self.resolution % 8:
            problems.append(f"resolution must be a multiple of 8 >= 64, got {self.resolution!r}")
        if not 0 < float(self.learning_rate) < 1:
            problems.append(f"learning_rate must be within (0, 1), got {self.learning_rate!r}")
        if self.accelerate_config and self.accelerate_config not in accelerate_configs():
            problems.append(f"accelerate config {self.accelerate_config!r} is not in {CONFIGS} "
                            f"(have: {', '.join(accelerate_configs())})")
        if self.crop not in CROPS:
            problems.append(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.report_to not in TRACKERS:
            problems.append(f"report_to must be one of {TRACKERS}, got {self.report_to!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            problems.append(f"epochs must be a whole number >= 0, got {self.epochs!r}")
        if self.recipe:
            try:
                with_recipe(self)
            except ValueError as exc:
                problems.append(str(exc))
        if self.devices not in ("all", "cpu") and not re.fullmatch(r"\d+(,\d+)*", self.devices or ""):
            problems.append(f"devices must be 'all', 'cpu' or GPU indices like 0,1; got {self.devices!r}")
        try:
            check_extra(self.extra)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))

    def run_inputs(self) -> dict:
        """The GPU set the run holds: one training run per set (``busy_with``)."""
        return {"device_set": sorted(self.device_set())}

    def device_set(self) -> set[str]:
        """The GPUs (or 'cpu') the run holds: two runs on one set would fight for memory."""
        if self.devices == "cpu" or not gpus():
            return {"cpu"}
        if self.devices == "all":
            return {str(g["index"]) for g in gpus()}
        return set(self.devices.split(","))


CROPS = ("random", "center", "face")
TRACKERS = ("none", "tensorboard", "wandb", "all")
#: the settings a recipe decides, and the script option each one is
RECIPE_FIELDS = {"learning_rate": "learning_rate", "batch_size": "train_batch_size", "resolution": "resolution",
                 "precision": "mixed_precision", "crop": "crop", "epochs": "num_train_epochs"}


def with_recipe(cfg: TrainConfig) -> TrainConfig:
    """The settings with the recipe's values in (what the run records and passes); a setting the person changed
    from its default to another value than the recipe's is refused, naming both."""
    import dataclasses

    if not cfg.recipe:
        return cfg
    from training.args import build_parser, recipe_defaults

    values = recipe_defaults(build_parser(), cfg.recipe)
    defaults = TrainConfig.defaults()
    changes = {}
    for name, option in RECIPE_FIELDS.items():
        if option not in values:
            continue
        mine = getattr(cfg, name)
        if mine != defaults[name] and mine != values[option]:
            raise ValueError(f"recipe {cfg.recipe!r} sets {name} to {values[option]!r}, the settings say {mine!r}: "
                             f"leave {name} at its default ({defaults[name]!r}) or train without the recipe")
        changes[name] = values[option]
    return dataclasses.replace(cfg, **changes)


#: training-script options the studio sets from a run's settings (launch_command); never from "extra"
SCRIPT_OPTIONS = ("family", "pretrained_model_name_or_path", "identitynet", "ip_adapter", "train_data",
                  "validation_data", "output_dir", "seed", "resolution", "train_batch_size", "max_train_steps",
                  "gradient_accumulation_steps", "learning_rate", "checkpointing_steps", "checkpoints_total_limit",
                  "validation_steps", "resume_from_checkpoint", "mixed_precision", "gradient_checkpointing",
                  "use_8bit_adam", "encode_in_loop", "recipe", "crop", "num_train_epochs", "report_to")


def check_extra(extra) -> None:
    """Extra script options: parsed by the training script's own parser; the studio's own are refused in
    every spelling (``--output_dir=X``, ``--output_d X``), and bad values are named before a run starts."""
    from training.args import build_parser, check

    from ..runs.argcheck import parse, refuse_reserved

    what = "more script arguments"
    refuse_reserved(build_parser(), extra, {d: "--" + d for d in SCRIPT_OPTIONS}, what)
    placeholders = ["--pretrained_model_name_or_path", "set-by-studio", "--train_data", "set-by-studio",
                    "--output_dir", "set-by-studio"]  # the required options, which launch_command gives
    p = build_parser()
    check(p, parse(p, placeholders + list(extra), what))


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig(name="x")
    p.add_argument("--name", required=True, help="name of the trained model in the Generate tab (and its folder)")
    p.add_argument("--model", default=d.model, help="starting model, as registered for generation (default InstantID)")
    p.add_argument("--start", choices=["model", "base"], default=d.start,
                   help="model: fine-tune its IdentityNet + IP-adapter; base: fresh adapter and IdentityNet from the UNet")
    p.add_argument("--manifest", help="pair manifest to train on (default: write the workspace's train split)")
    p.add_argument("--validation-manifest", dest="validation_manifest",
                   help="manifest for validation images (default: the workspace's validation pairs, if any)")
    p.add_argument("--captions", choices=["approved", "unflagged", "any"], default=d.captions)
    p.add_argument("--missing-caption", dest="missing_caption", choices=["skip", "template", "error"],
                   default=d.missing_caption)
    p.add_argument("--lr", dest="learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--steps", dest="max_steps", type=int, default=d.max_steps)
    p.add_argument("--batch", dest="batch_size", type=int, default=d.batch_size, help="per device")
    p.add_argument("--accumulate", dest="gradient_accumulation", type=int, default=d.gradient_accumulation)
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="mixed precision on GPUs (bf16 default; fp16 as the paper); the CPU runs bf16 or no")
    p.add_argument("--devices", default=d.devices, help="all (default), cpu, or GPU indices such as 0,1")
    p.add_argument("--accelerate-config", dest="accelerate_config",
                   help=f"one of training/configs: {', '.join(accelerate_configs()) or 'none'}")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=d.checkpoint_every)
    p.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--validation-every", dest="validation_every", type=int, default=d.validation_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true")
    p.add_argument("--use-8bit-adam", dest="use_8bit_adam", action="store_true")
    p.add_argument("--encode-in-loop", dest="encode_in_loop", action="store_true",
                   help="run the VAE and text encoders every step instead of caching latents and embeddings")
    p.add_argument("--recipe", default=d.recipe,
                   help="training/recipes/<name>.yaml applied to these settings (crossfaceid: the paper's recipe)")
    p.add_argument("--crop", choices=CROPS, default=d.crop,
                   help="training square: random (the official trainer's), center, or face (default)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the manifest (0: --steps decides)")
    p.add_argument("--face-candidates", dest="face_candidates", action="store_true",
                   help="the written manifest lists every paired face of a target; training draws one per epoch")
    p.add_argument("--report-to", dest="report_to", choices=TRACKERS, default=d.report_to,
                   help="experiment tracking through accelerate (TensorBoard files under the run's logs/)")
    p.add_argument("extra", nargs=argparse.REMAINDER,
                   help="after --: further arguments for training/train_instantid.py, passed as they are")


def output_dir(ws: Workspace, name: str) -> Path:
    return ws.root / "training" / name


def busy_with(ws: Workspace, devices: set[str], run_id: int | None = None) -> RunRow | None:
    """An earlier active training run holding any of ``devices`` (the later of two starts gives way)."""
    for r in ws.store.active_runs():
        if r["kind"] != "train" or r["id"] == run_id or (run_id is not None and r["id"] > run_id):
            continue
        if held_devices(r) & devices:
            return r
    return None


def held_devices(r: RunRow) -> set[str]:
    """The GPU set a training run holds (its inputs; runs recorded before kept it in their settings)."""
    return set((r["inputs"] or {}).get("device_set") or (r["settings"] or {}).get("device_set") or ["cpu"])


def refuse_if_gpus_busy(ws: Workspace, cfg: TrainConfig, run_id: int | None = None) -> None:
    other = busy_with(ws, cfg.device_set(), run_id)
    if other:
        held = ", ".join(sorted(held_devices(other)))
        raise TrainingError(f"training run {other['id']} (started by {other['author']}) is using {held}; "
                            "one training run per GPU set at a time: wait for it, stop it, or pick other devices")


def launch_command(cfg: TrainConfig, spec, out: Path, manifest: Path, validation: Path | None) -> list[str]:
    """``python -m accelerate.commands.launch ... train_instantid.py ...`` as an argument list."""
    devices = cfg.device_set()
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config:
        launch += ["--config_file", str(accelerate_configs()[cfg.accelerate_config])]
    if devices == {"cpu"}:
        launch += ["--cpu", "--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no"]
        precision = "bf16" if cfg.precision == "bf16" else "no"
    else:
        if not cfg.accelerate_config:
            launch += ["--num_machines", "1", "--dynamo_backend", "no"]
            launch += ["--multi_gpu"] if len(devices) > 1 else []
        if not cfg.accelerate_config or cfg.devices != "all":  # a config file's own process count otherwise
            launch += ["--num_processes", str(len(devices)), "--gpu_ids", ",".join(sorted(devices, key=int))]
        precision = cfg.precision
    launch += ["--mixed_precision", precision]
    from ..models import local_base_dir

    base = local_base_dir(spec.base)
    identitynet = ["--identitynet", "unet" if cfg.start == "base" else spec.identitynet] if spec.family == INSTANTID else []
    script = [str(SCRIPT), "--family", spec.family, "--pretrained_model_name_or_path", str(base or spec.base),
              *identitynet, "--ip_adapter", "init" if cfg.start == "base" else spec.ip_adapter,
              "--train_data", str(manifest), "--output_dir", str(out), "--seed", str(cfg.seed),
              "--resolution", str(cfg.resolution), "--train_batch_size", str(cfg.batch_size),
              "--max_train_steps", str(cfg.max_steps), "--gradient_accumulation_steps", str(cfg.gradient_accumulation),
              "--learning_rate", repr(float(cfg.learning_rate)), "--checkpointing_steps", str(cfg.checkpoint_every),
              "--checkpoints_total_limit", str(cfg.keep_checkpoints), "--validation_steps", str(cfg.validation_every),
              "--resume_from_checkpoint", "latest", "--mixed_precision", precision]
    script += ["--crop", cfg.crop, "--report_to", cfg.report_to]
    script += ["--recipe", cfg.recipe] if cfg.recipe else []
    script += ["--num_train_epochs", str(cfg.epochs)] if cfg.epochs else []
    if validation:
        script += ["--validation_data", str(validation)]
    for flag in ("gradient_checkpointing", "use_8bit_adam", "encode_in_loop"):
        if getattr(cfg, flag):
            script.append(f"--{flag}")
    return launch + script + list(cfg.extra)


def stop_group(proc: subprocess.Popen, grace_s: float, log=print) -> None:
    """SIGTERM to the run's process group (the script saves a checkpoint after its step and exits); what is
    still running after ``grace_s`` (a step that takes minutes on a CPU) is killed. Checkpoints are written
    whole or not at all, so the last one stays usable either way."""
    import signal

    def alive() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        return proc.poll() is None or _group_has_members(proc.pid)

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive():
        log("still running after the grace period: killing the training processes", flush=True)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _group_has_members(pgid: int) -> bool:
    """Whether a process of group ``pgid`` other than a zombie is left (the launcher's children)."""
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


_metrics_cache: dict[Path, tuple[int, list[dict]]] = {}  # file -> (bytes parsed, rows): pages poll it every 2 s


def read_metrics(out: Path) -> list[dict]:
    """The script's metrics lines (loss per step, validation images, final status); only new bytes are parsed."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        _metrics_cache.pop(path, None)
        return []
    done, rows = _metrics_cache.get(path, (0, []))
    size = path.stat().st_size
    if size < done:  # rewritten
        done, rows = 0, []
    with open(path, "rb") as fh:
        fh.seek(done)
        chunk = fh.read(size - done)
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for the next read
    rows = list(rows)
    for line in complete.decode("utf-8", "replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # not ours: skip it rather than lose the plot
    _metrics_cache[path] = (done + len(complete), rows)
    return list(rows)


def prepare_data(ws: Workspace, cfg: TrainConfig, out: Path, run_id: int | None, author: str) -> tuple[Path, Path | None]:
    """The manifests to train on: the given ones, or the workspace's pairs written into the run folder."""
    from .pairs import export_manifest

    if cfg.manifest:
        manifest = Path(cfg.manifest)
        if not manifest.is_file():
            raise TrainingError(f"manifest {manifest} does not exist")
        return manifest, Path(cfg.validation_manifest) if cfg.validation_manifest else None
    data = out / "data"
    export_manifest(ws, data, "train", captions=cfg.captions, missing_caption=cfg.missing_caption,
                    allow_other_pack=True, candidates=cfg.face_candidates, run_id=run_id, author=author)
    validation = None
    if cfg.validation_manifest:
        validation = Path(cfg.validation_manifest)
    elif ws.store.pairs("validation"):
        validation = data / "validation.jsonl"
        export_manifest(ws, data, "validation", captions=cfg.captions, missing_caption="template",
                        allow_other_pack=True, run_id=run_id, author=author)
    return data / "train.jsonl", validation


def check_start(ws: Workspace, cfg: TrainConfig, run_id: int | None = None):
    """Everything that refuses a training run before it starts; returns the starting model's spec.

    The app calls it before submitting the worker (a warning on the page), the worker again (the
    CLI, or a race): valid settings, free devices, a known starting model with its weights here,
    and a name no model has.
    """
    from ..models.generate import registered_models
    from ..models import missing_weights

    cfg.validate()
    refuse_if_gpus_busy(ws, cfg, run_id)
    models = registered_models(ws)
    if cfg.model not in models:
        raise TrainingError(f"unknown starting model {cfg.model!r}; registered: {sorted(models)}")
    missing = missing_weights(models[cfg.model])
    if cfg.start == "base":  # a fresh adapter and IdentityNet need only the SDXL base
        missing = [m for m in missing if m.startswith("SDXL base")]
    if missing:
        raise TrainingError(f"starting model '{cfg.model}' is missing weights on this machine:\n- " + "\n- ".join(missing))
    if models[cfg.model].lora and cfg.start == "model":
        raise TrainingError(f"starting model '{cfg.model}' uses a LoRA, which training does not load: start from its "
                            "adapter registered without the LoRA, or from the base (start base)")
    out = output_dir(ws, cfg.name)
    if (out / "ip-adapter.bin").is_file():
        raise TrainingError(f"a model named {cfg.name!r} exists already (already trained in {out}); choose another name")
    if cfg.name in models:
        raise TrainingError(f"a model named {cfg.name!r} exists already; choose another name")
    return models[cfg.model]


def manifest_face_pack(manifest: Path) -> str | None:
    """The face pack of a manifest's conditioning embeddings (the first line that records one)."""
    try:
        with open(manifest, encoding="utf-8") as fh:
            for line in fh:
                try:
                    pack = json.loads(line).get("face_pack")
                except (ValueError, AttributeError):
                    continue
                if pack:
                    return str(pack).split(":")[0]
    except OSError:
        return None
    return None


def train(ws: Workspace, cfg: TrainConfig, handle, author: str, log=print) -> dict:
    """Run training as run ``handle.run_id``: launch, watch, stop on cancel, register the result."""
    from ..models.generate import register_model
    from ..models import ModelSpec, family_of
    from ..runs.jobs import RunCancelled

    spec = check_start(ws, cfg, handle.run_id)
    out = output_dir(ws, cfg.name)
    try:
        writable_dir(out)
    except OSError as exc:
        raise TrainingError(f"cannot write to the output dir {out}: {exc.strerror or exc}") from None
    (out / "STOP").unlink(missing_ok=True)
    manifest, validation = prepare_data(ws, cfg, out, handle.run_id, author)
    cmd = launch_command(cfg, spec, out, manifest, validation)
    log("launching: " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cfg.device_set() != {"cpu"}:
        env.pop("CUDA_VISIBLE_DEVICES", None)  # accelerate's --gpu_ids decides
    # its own process group: a stop reaches accelerate's launcher and every training process it started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=REPO, text=True, bufsize=1, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def pump():
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            log(line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    cancelled = False
    try:
        while proc.poll() is None:
            time.sleep(1.0)
            rows = [r for r in read_metrics(out) if "loss" in r]
            handle.report(rows[-1]["step"] if rows else 0, cfg.max_steps, force=True)
    except RunCancelled:
        cancelled = True
        (out / "STOP").write_text(f"stop requested for run {handle.run_id}\n")
        log(f"stop requested: a checkpoint at the end of this step, or within {STOP_GRACE_S:.0f} s the processes "
            "end and the last checkpoint stays", flush=True)
        stop_group(proc, STOP_GRACE_S, log)
    reader.join(timeout=10)
    rows = read_metrics(out)
    if cancelled:
        raise RunCancelled(f"run {handle.run_id} stopped at step {max([r['step'] for r in rows] or [0])}")
    if proc.returncode != 0:
        ours = [line for line in tail if line.startswith("error:")]  # the script's own message names the cause
        others = [line for line in tail if "Error" in line and "CalledProcessError" not in line]
        cause = (ours or others or list(tail)[-1:] or ["no output"])[-1]
        raise TrainingError(f"training exited with code {proc.returncode}: {cause}")
    losses = [r for r in rows if "loss" in r]
    new = ModelSpec(cfg.name, base=spec.base, family=spec.family, face_pack=manifest_face_pack(manifest) or spec.face_pack,
                    lcm_lora=spec.lcm_lora, parent=cfg.model, **family_of(spec).saved_parts(out))
    register_model(ws, new)
    return {"model": cfg.name, "output_dir": str(out), "steps": losses[-1]["step"] if losses else 0,
            "final_loss": losses[-1]["loss"] if losses else None, "card": str(out / "training_card.json"),
            "manifest": str(manifest)}
