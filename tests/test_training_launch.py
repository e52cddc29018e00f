"""The training script through real `accelerate launch` and `torchrun` (CPU): exact resume from a
checkpoint, two-process data parallel, and bad inputs named. Its own module so that a parallel run
puts these long launches beside test_training.py's, not after them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, free_port, studio_cli
from test_training import ENV, SCRIPT, launch, script_args, trained

from studio.models import ModelSpec, load_instantid


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_straight(train_ws, tiny_spec, tmp_path):
    """A run that goes on from the step-2 checkpoint (what a killed or stopped run leaves) ends with the
    weights of the run that went straight through."""
    import shutil

    manifest = train_ws.root / "manifest" / "train.jsonl"
    straight = launch(*script_args(tiny_spec, manifest, tmp_path / "a", 4))
    assert straight.returncode == 0, straight.stderr[-3000:]
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    resumed = launch(*script_args(tiny_spec, manifest, tmp_path / "b", 4, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr and "checkpoint-2" in resumed.stdout + resumed.stderr
    again = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again if "loss" in r] == [3, 4]  # steps 1-2 came from the checkpoint
    a, b = trained(tmp_path / "a"), trained(tmp_path / "b")
    start = trained(Path(tiny_spec.identitynet)) if (Path(tiny_spec.identitynet) / "ip-adapter.bin").is_file() else None
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if start is not None:
        assert any(not torch.equal(a[k], start[k]) for k in a if k in start)
    losses = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.slow
def test_two_process_data_parallel_on_cpu(train_ws, tiny_spec, tmp_path):
    """torchrun --nproc_per_node 2: accelerate's MULTI_CPU over gloo; different samples, one writer."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(SCRIPT), *script_args(tiny_spec, train_ws.root / "manifest" / "train.jsonl", out, 2, "--log_samples",
                                     "--train_batch_size", "1")]
    # ACCELERATE_USE_CPU: what `accelerate launch --cpu` sets; with torchrun's WORLD_SIZE it means MULTI_CPU
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, **ENV, "ACCELERATE_USE_CPU": "true"},
                       timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "on 2 process(es)" in r.stdout
    seen = [[json.loads(x)["lines"] for x in (out / f"samples-rank{k}.jsonl").read_text().splitlines()] for k in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2
    for step in range(2):
        assert set(seen[0][step]).isdisjoint(seen[1][step])  # each process trained on other lines
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]  # written once, by the main process
    assert metrics[-1]["status"] == "done"
    model = load_instantid(ModelSpec("ddp", base=tiny_spec.base, identitynet=str(out),
                                     ip_adapter=str(out / "ip-adapter.bin")), "cpu")
    assert model.pipe.unet.encoder_hid_proj is not None


@pytest.mark.slow
def test_a_failed_training_run_keeps_its_cause_in_history(train_ws, tmp_path):
    """Through the studio and accelerate launch: the script's error reaches the run's record and log."""
    manifest = train_ws.root / "manifest" / "train.jsonl"
    lines = manifest.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0] + "\n" + lines[1].replace(".npy", "-gone.npy") + "\n")
    r = studio_cli("train", "--workspace", train_ws.root, "--name", "broken", "--model", "tiny", "--devices", "cpu",
                   "--manifest", broken, "--steps", "1", "--resolution", "64", "--", "--data_root", manifest.parent,
                   env=ENV)
    assert r.returncode == 2 and "training exited with code" in r.stderr
    run = train_ws.store.runs(kind="train", status="failed")[0]
    assert "line 2: insightface_feature_file" in run["error"]
