import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
import utils
from data import CIFAR10DataModule
from lit_classifier import LitClassifier
from plumbing import hardware
from tests.conftest import ROOT, RUN_FILES, assert_real_figures, figure_pixels, lowest_loss_lr

SUMMARY_KEYS = (
    "model",
    "params",
    "epochs",
    "batch_size",
    "train_images",
    "test_images",
    "test_acc",
    "test_loss",
    "train_seconds",
    "warmup_seconds",
    "eval_seconds",
    "wall_seconds",
    "train_epoch_seconds",
    "images_per_second",
    "device",
    "augment_on",
    "channels_last",
    "seed",
    "data",
)
QUIET = ["--enable-progress-bar", "false", "--num-workers", "0"]


def test_run_folder_has_every_file(small_run):
    for name in RUN_FILES:
        assert (small_run / name).stat().st_size > 0, name
    assert_real_figures(small_run)


def test_summary_fields(small_run):
    summary = json.loads((small_run / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["params"] == 6_573_130 and summary["epochs"] == 3 and summary["seed"] == 5
    assert (summary["train_images"], summary["test_images"]) == (105, 45)
    assert summary["data"] == "synthetic"
    assert summary["augment_on"] == "loader"  # the CPU's default, and its fastest layout:
    assert summary["channels_last"] is hardware.fast_channels_last(cuda=False)
    assert 0 <= summary["test_acc"] <= 1 and summary["train_seconds"] > 0
    # 5 full batches of 20 per epoch (the last 5 images are dropped); train_seconds is rounded to
    # the millisecond and images/s to a tenth, so the exact quotient lies within these bounds
    trained, seconds = 5 * 20 * 3, summary["train_seconds"]
    fastest, slowest = trained / (seconds - 5e-4), trained / (seconds + 5e-4)
    assert slowest - 0.05 <= summary["images_per_second"] <= fastest + 0.05
    # the test accuracy after each epoch (the last one is the final test's), and how busy the
    # machine was before and after
    assert len(summary["epoch_test_acc"]) == 3
    assert summary["epoch_test_acc"][-1] == pytest.approx(summary["test_acc"], abs=1e-6)
    assert len(summary["load_before"]) == len(summary["load_after"]) == 3
    assert all(load >= 0 for load in summary["load_before"] + summary["load_after"])


def test_cpu_training_ends_well_above_chance(small_run):
    summary = json.loads((small_run / "summary.json").read_text())
    assert summary["test_acc"] > 0.6, summary  # chance is 0.1


def test_metrics_csv_one_row_per_epoch(small_run):
    lines = (small_run / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,train_acc,val_loss,val_acc,lr"
    rows = [dict(zip(lines[0].split(","), map(float, line.split(",")))) for line in lines[1:]]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["lr"] > 0 for r in rows) and rows[0]["lr"] > rows[-1]["lr"]  # OneCycle anneals
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    summary = json.loads((small_run / "summary.json").read_text())
    # the reported accuracy is the final epoch's (validation = test split here), not the best
    # epoch's
    assert summary["test_acc"] == pytest.approx(rows[-1]["val_acc"], abs=1e-6)


def test_checkpoint_reproduces_reported_accuracy(small_run):
    lit = LitClassifier.load_from_checkpoint(small_run / "last.ckpt", map_location="cpu")
    dm = CIFAR10DataModule(
        synthetic=True, train_size=105, test_size=45, seed=5, batch_size=64, num_workers=0
    )
    dm.setup()
    probs, labels = utils.predict(lit.model, dm.test_dataloader())
    summary = json.loads((small_run / "summary.json").read_text())
    assert float((probs.argmax(1) == labels).mean()) == pytest.approx(summary["test_acc"], abs=1e-6)


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    import pytorch_lightning as pl

    lit = LitClassifier("resnet18", lr=0.05)
    dm = CIFAR10DataModule(
        synthetic=True, train_size=40, test_size=20, batch_size=20, num_workers=0
    )
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(lit, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = LitClassifier.load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu")
    assert loaded.hparams.model_name == "resnet18"
    images = torch.randn(8, 3, 32, 32)
    lit.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(lit(images), loaded(images))


def test_cli_on_a_cifar_format_folder_writes_every_file(cifar_dir, tmp_path):
    out = tmp_path / "cli_run"
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--model",
            "custom_resnet",
            "--data-dir",
            str(cifar_dir),
            "--train-size",
            "100",
            "--test-size",
            "50",
            "--epochs",
            "1",
            "--batch-size",
            "50",
            "--out",
            str(out),
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--precision",
            "32",
        ]
        + QUIET,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in RUN_FILES:
        assert (out / name).stat().st_size > 0, name
    assert_real_figures(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"].startswith("CIFAR-10") and summary["train_images"] == 100
    assert "test accuracy" in result.stdout


def test_the_curves_show_the_runs_own_metrics(small_run, tiny_run):
    """Two runs with other metrics draw other curves (a figure of nothing, or a fixed one, would
    not)."""
    curves = [figure_pixels(run / "curves.png") for run in (small_run, tiny_run)]
    assert not np.array_equal(*curves)


def test_lr_find_sets_the_peak_and_saves_its_plot(tmp_path, monkeypatch):
    found, speed = [], []

    def recording_find_lr(*args, **kwargs):
        found.append(find_lr(*args, **kwargs))
        speed.append({key: kwargs[key] for key in ("precision", "channels_last")})
        return found[-1]

    find_lr = train.find_lr
    monkeypatch.setattr(train, "find_lr", recording_find_lr)
    out = tmp_path / "lr_run"
    argv = [
        "--synthetic",
        "--train-size",
        "100",
        "--test-size",
        "20",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--lr-find",
        "--out",
        str(out),
    ] + QUIET
    assert train.main(argv) == 0
    ((suggested, figure),) = found
    # the rule: a tenth of the LR where the range test's smoothed loss was lowest; the run uses it
    assert suggested == pytest.approx(lowest_loss_lr(figure) / 10, rel=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["lr"] == suggested
    # the range test runs as the training did: its precision and memory layout
    assert speed == [{key: summary[key] for key in ("precision", "channels_last")}]
    checkpoint = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["lr"] == suggested
    assert figure_pixels(out / "lr_finder.png").shape[1] >= 400


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "resnet50"], "unknown model 'resnet50'"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--train-size", "5"], "--train-size 5 is too small"),
        (["--data-dir", "{empty}", "--train-size", "100000"], "--train-size 100000 asks for"),
        (["--data-dir", "{nothing}", "--no-synthetic"], "could not be downloaded.*--synthetic"),
        (["--accelerator", "no_such_device"], "accelerator.*no_such_device"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, tmp_path, cifar_dir, capsys, monkeypatch):
    import data

    monkeypatch.setattr(data, "CIFAR_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    argv = [
        a.replace("{empty}", str(cifar_dir)).replace("{nothing}", str(tmp_path / "none"))
        for a in argv
    ]
    synthetic = [] if "--data-dir" in argv else ["--synthetic"]
    argv = [a for a in argv if a != "--no-synthetic"]
    assert train.main(argv + synthetic + ["--out", str(tmp_path / "out")] + QUIET) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_cli_error_exits_nonzero_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "out"),
            "--epochs",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: --epochs")
