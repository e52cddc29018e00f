"""What reaches a worker: a stage's arguments and the training script's extra options, parsed by the
worker's own parser (studio.runs.argcheck), refused in every spelling when they set the studio's own options."""
from __future__ import annotations

import pytest

from studio.runs.jobs import settings_from_args
from studio.train.launch import TrainConfig, check_extra


@pytest.mark.parametrize("args, message", [
    (["--workspace=/other"], "--workspace is set by the studio"),
    (["--workspace", "/other"], "--workspace is set by the studio"),
    (["--works", "/other"], "--workspace is set by the studio"),  # an abbreviation argparse takes
    (["--author=someone"], "--author is set by the studio"),
    (["--run-id", "3"], "unrecognized arguments: --run-id"),  # the worker takes its run id as its only argument
    (["--workspace=/x", "--author=y"], "--author, --workspace are set by the studio"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--help"], "--help is not an argument for a run"),
    ("--workspace /x", "must be a list of strings"),
    (["--face-pack", "a\0b"], "NUL byte"),
])
def test_stage_arguments_are_parsed_as_the_worker_parses(args, message):
    with pytest.raises(ValueError, match=message):
        settings_from_args("curate", args)


def test_good_stage_arguments_pass(capsys):
    settings_from_args("curate", [])
    settings_from_args("analyze", ["--face-pack", "bundled", "--workers", "2"])
    settings_from_args("train", ["--name", "m", "--devices", "cpu", "--", "--lr_warmup_steps", "10"])
    assert capsys.readouterr().out == ""  # nothing printed (no usage text)


@pytest.mark.parametrize("extra, message", [
    (["--output_dir", "/elsewhere"], "--output_dir is set by the studio"),
    (["--output_dir=/elsewhere"], "--output_dir is set by the studio"),
    (["--output_d", "/elsewhere"], "--output_dir is set by the studio"),
    (["--train_data=/x.jsonl"], "--train_data is set by the studio"),
    (["--mixed_precision", "fp16"], "--mixed_precision is set by the studio"),
    ("--output_dir /elsewhere", "must be a list of strings"),
    ([1, 2], "must be a list of strings"),
    (["--drop_text", "0.9", "--drop_face", "0.9"], "sum to at most 1"),
    (["--lr_warmup_steps", "ten"], "invalid int value"),
])
def test_extra_training_options_refuse_the_studios_own(extra, message):
    with pytest.raises(ValueError, match=message):
        check_extra(extra)
    with pytest.raises(ValueError, match=message):
        TrainConfig(name="m", extra=extra).validate()  # the one check the form, the API and the worker share


def test_a_train_run_smuggling_through_run_start_is_refused():
    with pytest.raises(ValueError, match="--output_dir is set by the studio"):
        settings_from_args("train", ["--name", "m", "--", "--output_dir=/elsewhere"])
    check_extra(["--lr_scheduler", "cosine", "--data_root", "/data"])  # the script's own options pass
