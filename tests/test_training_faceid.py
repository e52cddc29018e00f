"""Fine-tuning the second family, IP-Adapter-FaceID, with the same script, manifest and pairing: only the
face projection and the IP layers move; exact resume; two processes; a studio training run whose
weights, saved in the release's layout, match the equations when generated from."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, free_port, studio_cli
from test_training import ENV, SCRIPT, launch, steps_move_only_the_trainable_parts

from studio.models import FACEID, load_faceid
from studio.models.faceid import FACEID_FILE

FACEID_ARGS = ("--family", "IP-Adapter-FaceID")


def faceid_args(spec, manifest: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [*FACEID_ARGS, "--pretrained_model_name_or_path", spec.base, "--ip_adapter", spec.ip_adapter,
            "--train_data", str(manifest), "--output_dir", str(out), "--resolution", "64", "--train_batch_size", "2",
            "--max_train_steps", str(steps), "--learning_rate", "1e-3", "--checkpointing_steps", "2", "--seed", "7",
            *extra]


def adapter(out: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out / FACEID_FILE, weights_only=True)
    return {f"{part}.{k}": v for part, d in state.items() for k, v in d.items()}


@pytest.mark.slow
def test_faceid_steps_move_only_the_face_projection_and_ip_layers(train_ws, tiny_faceid_spec):
    """The script's own model building and step for the FaceID family, fp32 and bf16: the UNet, VAE and
    text encoders stay bit-identical; the projection and to_k_ip / to_v_ip move; there is no IdentityNet."""
    from training.train_instantid import FaceIDTrainer

    for dtype in (torch.float32, torch.bfloat16):
        model, parts, moved = steps_move_only_the_trainable_parts(
            faceid_args(tiny_faceid_spec, train_ws.root / "manifest" / "train.jsonl", train_ws.root / "x", 3), dtype)
        assert isinstance(model, FaceIDTrainer) and parts["controlnet"] is None
        assert model.carry and all("_lora." in k for k in model.carry)  # the release's LoRA keys, kept aside
        trainable = [k for k, v in model.named_parameters() if v.requires_grad]
        assert trainable and all("encoder_hid_proj" in k or "_ip." in k for k in trainable)
        assert any("encoder_hid_proj" in k for k in moved) and any("to_k_ip" in k for k in moved)
        assert any("to_v_ip" in k for k in moved)


@pytest.mark.slow
def test_faceid_resume_gives_the_same_weights_as_straight(train_ws, tiny_faceid_spec, tmp_path):
    manifest = train_ws.root / "manifest" / "train.jsonl"
    straight = launch(*faceid_args(tiny_faceid_spec, manifest, tmp_path / "a", 4))
    assert straight.returncode == 0, straight.stderr[-3000:]
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    resumed = launch(*faceid_args(tiny_faceid_spec, manifest, tmp_path / "b", 4, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    start = {f"{part}.{k}": v for part, d in torch.load(Path(tiny_faceid_spec.ip_adapter) / FACEID_FILE,
                                                         weights_only=True).items() for k, v in d.items()}
    assert a.keys() == b.keys() == start.keys()  # the release's LoRA keys are carried over, unchanged
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], start[k]) for k in a if "_lora." in k)
    assert any(not torch.equal(a[k], start[k]) for k in a if "_lora." not in k)
    assert not (tmp_path / "a" / "ControlNetModel").exists()
    card = json.loads((tmp_path / "a" / "training_card.json").read_text())
    assert card["family"] == "IP-Adapter-FaceID" and card["weights"] == {"ip_adapter": FACEID_FILE}


@pytest.mark.slow
def test_faceid_two_process_data_parallel_on_cpu(train_ws, tiny_faceid_spec, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(SCRIPT), *faceid_args(tiny_faceid_spec, train_ws.root / "manifest" / "train.jsonl", out, 2,
                                     "--log_samples", "--train_batch_size", "1")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, **ENV, "ACCELERATE_USE_CPU": "true"}, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "on 2 process(es)" in r.stdout
    seen = [[json.loads(x)["lines"] for x in (out / f"samples-rank{k}.jsonl").read_text().splitlines()] for k in (0, 1)]
    for step in range(2):
        assert set(seen[0][step]).isdisjoint(seen[1][step])
    model = load_faceid(dataclasses.replace(tiny_faceid_spec, ip_adapter=str(out)), "cpu")
    assert model.pipe.unet.encoder_hid_proj is not None


@pytest.mark.slow
def test_a_studio_training_run_of_the_faceid_family_matches_the_equations(train_ws, tiny_faceid_spec):
    """`python -m studio train --model <a FaceID model>`: the run launches the script with the family, registers
    the result as a FaceID model, and its weights, saved in the release's layout, generate what the equations
    give (the golden test's reference, here on weights the studio trained)."""
    from test_faceid import EMB, S, kps_image, pixels, reference_generate

    from studio.models import load_ip_adapter_state
    from studio.models.generate import register_model, registered_models

    register_model(train_ws, tiny_faceid_spec)
    r = studio_cli("train", "--workspace", train_ws.root, "--json", "--name", "tiny-faceid-cross", "--model",
                   "tiny-faceid", "--devices", "cpu", "--precision", "no", "--steps", "2", "--batch", "2",
                   "--resolution", "64", "--checkpoint-every", "2", "--missing-caption", "template", "--lr", "1e-3",
                   env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "--family IP-Adapter-FaceID" in r.stdout and "--identitynet" not in r.stdout
    spec = registered_models(train_ws)["tiny-faceid-cross"]
    assert spec.family == FACEID and spec.ip_adapter.endswith(FACEID_FILE) and spec.identitynet == ""
    assert spec.parent == "tiny-faceid"  # its Δ in Table 2 is taken against the model it started from
    state = load_ip_adapter_state(Path(spec.ip_adapter))
    for dtype, tol in ((torch.float32, 0.05), (torch.bfloat16, 2.0)):  # as test_faceid's golden test
        model = load_faceid(spec, "cpu", dtype=dtype)
        for lam in (0.0, 0.5, 1.0):
            s = dataclasses.replace(S, ip_scale=lam)
            ours = pixels(model(EMB, kps_image(), s))
            expected = pixels(reference_generate(spec, state, EMB, s, dtype))
            assert np.abs(ours - expected).mean() <= tol, (dtype, lam)
    model = load_faceid(spec, "cpu")
    before = pixels(load_faceid(tiny_faceid_spec, "cpu")(EMB, kps_image(), dataclasses.replace(S, ip_scale=1.0)))
    assert np.abs(before - pixels(model(EMB, kps_image(), dataclasses.replace(S, ip_scale=1.0)))).max() > 0
