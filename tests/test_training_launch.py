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


@pytest.mark.slow
def test_the_paper_data_path_resumes_exactly_and_logs_to_tensorboard(train_ws, tiny_spec, tmp_path):
    """Random crops, a face drawn per epoch from each line's candidates, epochs deciding the length, no
    clipping, TensorBoard through accelerate: 2 epochs straight end with the weights of 1 checkpoint + resume,
    and TensorBoard's own event reader gives back the logged loss of every step."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = [json.loads(x) for x in (train_ws.root / "manifest" / "train.jsonl").read_text().splitlines()]
    files = [d["insightface_feature_file"] for d in lines]
    for k, d in enumerate(lines):  # two candidate faces per target (the paper: a random other face per epoch)
        d["face_candidates"] = [files[k], files[(k + 1) % len(files)]]
    manifest = train_ws.root / "manifest" / "candidates.jsonl"
    manifest.write_text("".join(json.dumps(d) + "\n" for d in lines))
    per_epoch = -(-len(lines) // 2)  # batch 2, one process
    extra = ("--crop", "random", "--num_train_epochs", "2", "--max_grad_norm", "0", "--report_to", "tensorboard",
             "--checkpointing_steps", str(per_epoch))
    straight = launch(*script_args(tiny_spec, manifest, tmp_path / "a", 1000, *extra))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "encoded in the loop" in straight.stdout
    steps = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in steps if "loss" in r}
    assert sorted(logged) == list(range(1, 2 * per_epoch + 1))  # the epochs decided the length, not --max_train_steps
    assert all(r["grad_norm"] > 0 for r in logged.values())
    card = json.loads((tmp_path / "a" / "training_card.json").read_text())
    assert (card["crop"], card["epochs"], card["latents"]) == ("random", 2, "encoded in the loop (random crops)")

    shutil.copytree(tmp_path / "a" / f"checkpoint-{per_epoch}", tmp_path / "b" / f"checkpoint-{per_epoch}")
    resumed = launch(*script_args(tiny_spec, manifest, tmp_path / "b", 1000, *extra, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = trained(tmp_path / "a"), trained(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical

    events = EventAccumulator(str(tmp_path / "a" / "logs" / "crossfaceid-studio"))  # accelerate: logs/<project>
    events.Reload()
    loss = {e.step: e.value for e in events.Scalars("loss")}
    assert sorted(loss) == sorted(logged) and all(abs(loss[s] - logged[s]["loss"]) < 1e-6 for s in loss)
    assert {"lr", "grad_norm"} <= set(events.Tags()["scalars"])


@pytest.mark.slow
def test_wandb_tracks_offline(train_ws, tiny_spec, tmp_path):
    """--report_to wandb with WANDB_MODE=offline: a run folder wandb can sync later, holding the settings."""
    manifest = train_ws.root / "manifest" / "train.jsonl"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", str(SCRIPT),
           *script_args(tiny_spec, manifest, tmp_path / "w", 2, "--report_to", "wandb")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **ENV, **env}, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (log,) = run.glob("run-*.wandb")  # the record log `wandb sync` uploads (protobuf records, read by wandb's Go core)
    data = log.read_bytes()
    assert data.count(b"grad_norm") >= 2 and data.count(b"loss") >= 2  # a history record per step
    assert b"learning_rate" in data and b"0.001" in data  # the settings, as the run's config
