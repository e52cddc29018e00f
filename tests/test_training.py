"""Cross-training fine-tuning with tiny InstantID weights built from configs, through real `accelerate launch`."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, studio_cli
from PIL import Image

from studio.models import (ModelSpec, copy_ip_adapter_state_, init_ip_adapter_state, ip_adapter_state_dict,
                           load_instantid)

SCRIPT = REPO / "training" / "train_instantid.py"
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def script_args(spec: ModelSpec, manifest: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--pretrained_model_name_or_path", spec.base, "--identitynet", spec.identitynet,
            "--ip_adapter", spec.ip_adapter, "--train_data", str(manifest), "--output_dir", str(out),
            "--resolution", "64", "--train_batch_size", "2", "--max_train_steps", str(steps),
            "--learning_rate", "1e-3", "--checkpointing_steps", "2", "--seed", "7", *extra]


def launch(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **ENV}, timeout=timeout)


def trained(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ip = torch.load(out / "ip-adapter.bin", weights_only=True)
    flat = {f"{part}.{k}": v for part, d in ip.items() for k, v in d.items()}
    flat.update({f"controlnet.{k}": v for k, v in load_file(out / "ControlNetModel" / "diffusion_pytorch_model.safetensors").items()})
    return flat


def test_ip_adapter_layout_round_trip(tiny_spec):
    """Saving converts diffusers' modules back to the official layout exactly; a fresh adapter fits."""
    from diffusers import UNet2DConditionModel

    from studio.models import check_ip_adapter, load_ip_adapter_state

    unet = UNet2DConditionModel.from_pretrained(Path(tiny_spec.base) / "unet")
    official = load_ip_adapter_state(Path(tiny_spec.ip_adapter))
    unet._load_ip_adapter_weights([official])
    back = ip_adapter_state_dict(unet)
    assert {p: set(d) for p, d in back.items()} == {p: set(d) for p, d in official.items()}
    assert all(torch.equal(back[p][k], official[p][k]) for p in official for k in official[p])
    shifted = {p: {k: v + 1 for k, v in d.items()} for p, d in official.items()}
    copy_ip_adapter_state_(unet, shifted)
    assert all(torch.equal(ip_adapter_state_dict(unet)[p][k], shifted[p][k]) for p in shifted for k in shifted[p])
    fresh_unet = UNet2DConditionModel.from_pretrained(Path(tiny_spec.base) / "unet")
    from studio.models import ResamplerShape
    from tiny_models import TINY_RESAMPLER

    fresh = init_ip_adapter_state(fresh_unet, ResamplerShape(**TINY_RESAMPLER))
    check_ip_adapter(fresh, fresh_unet)
    attn = fresh_unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    assert torch.equal(fresh["ip_adapter"]["1.to_k_ip.weight"], attn.to_k.weight)  # initialised from to_k


def steps_move_only_the_trainable_parts(argv: list[str], dtype) -> tuple[object, dict, list[str]]:
    """Build the script's model from ``argv`` and take 3 steps in ``dtype``: the UNet, VAE and text encoders
    stay bit-identical (checked here); returns (model, parts, names of the trainable parameters that moved)."""
    from training.data import PairDataset, collate, read_manifest
    from training.train_instantid import encode_empty, freeze, load_models, parse_args, step_generator, training_step

    class Acc:  # the attribute training_step reads from an Accelerator
        device = torch.device("cpu")

    args = parse_args(argv)
    parts = load_models(args)
    model = freeze(parts, dtype, torch.device("cpu"))
    frozen = {name: {k: v.clone() for k, v in parts[name].state_dict().items()}
              for name in ("vae", "text_encoder", "text_encoder_2")}
    trainable_ids = {id(p) for p in model.trainable()}
    unet_frozen = {k: v.clone() for k, v in model.unet.named_parameters() if id(v) not in trainable_ids}
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    opt = torch.optim.AdamW(model.trainable(), lr=1e-3)
    data = PairDataset(read_manifest(args.train_data), 64)
    batch = collate([data[0], data[1]])
    empty = encode_empty(parts, torch.device("cpu"), dtype)
    for step in range(3):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = training_step(args, Acc, model, parts, parts["noise_scheduler"], batch, empty, dtype,
                                 step_generator(0, step, 0, 0))
        assert math.isfinite(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    for name, state in frozen.items():
        assert all(torch.equal(v, parts[name].state_dict()[k]) for k, v in state.items()), name
    assert all(torch.equal(v, dict(model.unet.named_parameters())[k]) for k, v in unet_frozen.items())
    return model, parts, [k for k, v in model.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]


@pytest.mark.slow
def test_steps_move_only_the_trainable_parts(train_ws, tiny_spec):
    """The script's own model building and step: UNet, VAE and text encoders stay bit-identical (bf16 too)."""
    for dtype in (torch.float32, torch.bfloat16):
        model, _, moved = steps_move_only_the_trainable_parts(
            script_args(tiny_spec, train_ws.root / "manifest" / "train.jsonl", train_ws.root / "x", 3), dtype)
        trainable = [k for k, v in model.named_parameters() if v.requires_grad]
        assert any(k.startswith("controlnet.") for k in trainable) and any("to_k_ip" in k for k in trainable)
        assert any("encoder_hid_proj" in k for k in trainable)
        assert any(k.startswith("controlnet.") for k in moved) and any("to_k_ip" in k for k in moved)
        assert any("encoder_hid_proj" in k for k in moved)


def official_sample(path: Path, landmarks, resolution: int, top: int, left: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official trainer's preparation, written here from its description: keypoints drawn on the whole
    photo (the published drawing, test_draw.reference_rendering), photo and keypoint image resized with
    torchvision's Resize(short side, bilinear), both cropped at the same (top, left)."""
    from test_draw import reference_rendering
    from torchvision import transforms

    with Image.open(path) as im:
        im = im.convert("RGB")
    kps = Image.fromarray(reference_rendering(im.width, im.height, landmarks))
    resize = transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR)
    crop = (lambda t: transforms.functional.crop(t, top=top, left=left, height=resolution, width=resolution))
    photo = crop(transforms.Normalize([0.5], [0.5])(transforms.ToTensor()(resize(im))))
    return crop(transforms.ToTensor()(resize(kps))), photo


@pytest.mark.parametrize("crop", ["random", "center", "face"])
def test_a_training_sample_is_prepared_as_the_official_trainer_prepares_it(train_ws, crop):
    """Keypoint image and photo pixel for pixel, with the crop each mode chose; random crops keep the short
    side's offset in its upper half (as there), follow the epoch and repeat for the same (seed, epoch)."""
    from training.data import PairDataset, read_manifest

    samples = read_manifest(train_ws.root / "manifest" / "train.jsonl")
    data = PairDataset(samples, 128, crop=crop, seed=3)
    tops = set()
    for k, s in enumerate(samples):
        for epoch in (0, 1):
            data.epoch = epoch
            item = data[k]
            original_h, original_w, top, left = (int(v) for v in item["time_ids"][:4].tolist())
            with Image.open(s.image) as im:
                assert (original_h, original_w) == (im.height, im.width)
                long_excess = int(128 * max(im.size) / min(im.size)) - 128
            kps, photo = official_sample(s.image, s.landmarks, 128, top, left)
            assert torch.equal(item["kps_image"], kps)  # exactly: the same drawing, resize and crop
            assert (item["pixel_values"] - photo).abs().max() < 1e-5  # the same pixels (float rounding only)
            offset = left if im.width >= im.height else top
            assert 0 <= offset <= long_excess and 0 <= min(left, top) and (left == 0 or top == 0)
            if crop == "random" and im.width < im.height:
                assert top <= long_excess // 2  # the upper half, as the official trainer draws it
            if crop == "center":
                assert offset == long_excess // 2
            again = data[k]
            assert torch.equal(again["kps_image"], item["kps_image"])  # the same (seed, epoch): the same crop
            tops.add((k, offset))
    if crop == "random":
        assert len(tops) > len(samples)  # some line was cut elsewhere in the other epoch
    else:
        assert len(tops) == len(samples)  # a fixed crop every epoch
    face = PairDataset(samples, 128, crop="face")[0]
    s = samples[0]
    with Image.open(s.image) as im:
        resized = (int(128 * im.width / min(im.size)) / im.width, int(128 * im.height / min(im.size)) / im.height)
    kps = s.landmarks * np.array(resized) - np.array([face["time_ids"][3].item(), face["time_ids"][2].item()])
    assert (kps >= 0).all() and (kps < 128).all()  # around the face: the face stays inside the crop


def test_noise_seeds_never_repeat_within_a_run():
    """Accumulation 16 on 16 processes over 200 steps: 51,200 micro-batches, as many different seeds (the
    old formula reused 17,910), and the same four numbers always give the same noise (resume)."""
    from training.train_instantid import step_generator, step_seed

    seeds = {step_seed(0, step, micro, rank) for step in range(200) for micro in range(16) for rank in range(16)}
    assert len(seeds) == 200 * 16 * 16
    a, b = torch.randn(4, generator=step_generator(5, 7, 3, 1)), torch.randn(4, generator=step_generator(5, 7, 3, 1))
    assert torch.equal(a, b) and not torch.equal(a, torch.randn(4, generator=step_generator(5, 7, 3, 2)))


def test_the_paper_recipe_fills_what_the_command_line_leaves_out():
    from training.args import parse

    required = ["--pretrained_model_name_or_path", "b", "--train_data", "t", "--output_dir", "o"]
    plain = parse(required)
    paper = parse(required + ["--recipe", "crossfaceid"])
    assert (plain.crop, plain.num_train_epochs, plain.max_grad_norm, plain.mixed_precision) == ("face", 0, 1.0, None)
    assert (paper.crop, paper.num_train_epochs, paper.max_grad_norm, paper.mixed_precision) == ("random", 5, 0.0, "fp16")
    assert (paper.learning_rate, paper.adam_weight_decay, paper.resolution, paper.lr_scheduler) == (
        1e-5, 0.01, 512, "constant")
    assert parse(required + ["--recipe", "crossfaceid", "--crop", "center", "--num_train_epochs", "2"]).crop == "center"
    with pytest.raises(SystemExit):
        parse(required + ["--recipe", "nope"])


@pytest.mark.slow
def test_studio_train_run_bf16_loads_and_changes_output(train_ws, tiny_spec, tiny_model):
    """`python -m studio train` -> accelerate launch (CPU, bf16): a run in history, checkpoints, a new model."""
    r = studio_cli("train", "--workspace", train_ws.root, "--json", "--name", "tiny-cross", "--model", "tiny",
                   "--devices", "cpu", "--precision", "bf16", "--steps", "4", "--batch", "2", "--resolution", "64",
                   "--checkpoint-every", "1", "--keep-checkpoints", "2", "--missing-caption", "template",
                   "--validation-every", "4", "--lr", "1e-3", "--", "--validation_inference_steps", "2", env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout[r.stdout.rindex("\n{"):])
    out = Path(result["output_dir"])
    assert result["steps"] == 4 and math.isfinite(result["final_loss"])
    assert "--mixed_precision bf16" in r.stdout  # the launch line is in the run's output
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]  # keep the last 2
    assert (out / "checkpoint-4" / "trainable" / "ip-adapter.bin").is_file()
    assert not list((out / "checkpoint-4").glob("model*.safetensors"))  # the frozen SDXL is not copied
    assert len(list((out / "validation").glob("step-000004-*.png"))) == 2
    card = json.loads((out / "training_card.json").read_text())
    manifest = Path(result["manifest"])
    import hashlib

    assert card["data_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert card["steps"] == 4 and card["split"] == "train" and card["mixed_precision"] == "bf16"
    run = train_ws.store.run(result["run_id"])
    assert run["kind"] == "train" and run["status"] == "done" and run["inputs"]["device_set"] == ["cpu"]
    from studio.models.generate import registered_models

    spec = registered_models(train_ws)["tiny-cross"]
    model = load_instantid(spec, "cpu")
    from studio.models import GenerationSettings

    settings = GenerationSettings(prompt="a man", steps=2, width=64, height=64, guidance=1.0)
    emb = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    kps = Image.new("RGB", (64, 64))
    a = np.asarray(model(emb, kps, settings), dtype=np.int16)
    b = np.asarray(tiny_model(emb, kps, settings), dtype=np.int16)
    assert np.abs(a - b).max() > 0  # the fine-tuned adapter and IdentityNet change the picture
    # saved in fp32, loaded for a reduced-precision pipeline as a GPU loads it (fp16 there; bf16 runs on the CPU)
    half = np.asarray(load_instantid(spec, "cpu", dtype=torch.bfloat16)(emb, kps, settings))
    assert half.shape == (64, 64, 3) and half.std() > 0
    # the same name again is refused, naming the existing model
    again = studio_cli("train", "--workspace", train_ws.root, "--name", "tiny-cross", "--model", "tiny", "--devices",
                       "cpu", env=ENV)
    assert again.returncode == 2 and "already trained" in again.stderr


def test_8bit_adam_without_bitsandbytes_says_how(train_ws, tiny_spec, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    from training.train_instantid import main

    code = main(script_args(tiny_spec, train_ws.root / "manifest" / "train.jsonl", tmp_path / "o", 1, "--use_8bit_adam"))
    assert code == 2 and "pip install bitsandbytes" in capsys.readouterr().err


def test_bad_inputs_are_named(train_ws, tiny_spec, tmp_path, capsys):
    """The script's own checks, called as `accelerate launch` calls it (its main); the launch itself is
    covered by the resume, data-parallel and failed-run tests."""
    from training.train_instantid import main

    def run(*args: str) -> str:
        assert main(list(args)) == 2
        return capsys.readouterr().err

    manifest = train_ws.root / "manifest" / "train.jsonl"
    lines = manifest.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0] + "\n" + lines[1].replace(".npy", "-gone.npy") + "\n")
    err = run(*script_args(tiny_spec, broken, tmp_path / "o1", 1, "--data_root", str(manifest.parent)))
    assert "line 2: insightface_feature_file" in err and "does not exist" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "has no lines" in run(*script_args(tiny_spec, empty, tmp_path / "o2", 1))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert "cannot write to the output dir" in run(*script_args(tiny_spec, manifest, blocker / "out", 1))
    no_ip = tmp_path / "not-instantid.bin"
    torch.save({"image_proj": {}, "ip_adapter": {}}, no_ip)
    args = script_args(tiny_spec, manifest, tmp_path / "o3", 1)
    args[args.index("--ip_adapter") + 1] = str(no_ip)
    err = run(*args)
    assert "error: " in err and "not an InstantID Resampler" in err and "--ip_adapter init" in err


def test_metrics_are_read_incrementally(tmp_path):
    from studio.train.launch import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # the second line is being written
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}]
    with open(path, "a") as fh:
        fh.write('ss": 0.4}\nnot json\n{"step": 3, "loss": 0.3}\n')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    path.write_text('{"step": 1, "loss": 0.9}\n')  # a new run rewrote it
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.9}]


def test_manifest_lines_with_bad_values_are_named_by_line(train_ws, tmp_path):
    """Every bad line is listed (wrong type, NUL byte, missing field), so one read fixes them all."""
    from training.data import ManifestError, read_manifest

    manifest = train_ws.root / "manifest" / "train.jsonl"
    good = json.loads(manifest.read_text().splitlines()[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(x) for x in (
        good, {**good, "bbox": "abc"}, {**good, "image_file": "images/a\u0000b.jpg"},
        {k: v for k, v in good.items() if k != "landmarks"}, {**good, "additional_feature": {"text": 1}})) + "\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(bad, manifest.parent)
    message = str(err.value)
    for expected in ("line 2: ValueError", "line 3: image_file", "line 4: KeyError: 'landmarks'", "line 5: ValueError"):
        assert expected in message, message
    assert "line 1" not in message
