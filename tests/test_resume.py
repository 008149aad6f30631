"""Runs that crash: a SIGKILLed run resumed with --resume ends exactly like the uninterrupted one;
same seed, same metrics, another seed, other metrics; resumed settings cannot drift; a NaN loss
stops the run and leaves the last good checkpoint alone."""

import json
import re
import subprocess
import sys

import pytest
import torch

import train
from lit_classifier import LitClassifier
from plumbing import hardware
from tests.conftest import ROOT, SMALL_RUN, kill_after_first_checkpoint, parse_train_args

CPU_FLAGS = {"precision": hardware.fast_precision(cuda=False)}  # what train.py sets for the CPU


def train_cli(*argv):
    return subprocess.run(
        [sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def metric_rows(run_dir):
    return (run_dir / "metrics.csv").read_text().splitlines()[1:]


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def reference(small_run):
    """The uninterrupted run every other run here is compared with (SMALL_RUN, no workers)."""
    rows = metric_rows(small_run)
    # it learned: equal results are not all-chance
    assert len(rows) == 3 and float(rows[-1].split(",")[4]) > 0.5
    return small_run


def test_the_seed_alone_decides_the_metrics(reference, tmp_path):
    """The same seed and settings, in another process, give identical metrics; another seed gives
    others."""
    again, other = tmp_path / "again", tmp_path / "seed6"
    result = train_cli(*SMALL_RUN, "--num-workers", "0", "--out", str(again))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (again / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    assert summary(again)["test_acc"] == summary(reference)["test_acc"]
    assert summary(again)["test_loss"] == summary(reference)["test_loss"]
    assert train.main(SMALL_RUN + ["--seed", "6", "--num-workers", "0", "--out", str(other)]) == 0
    assert summary(other)["seed"] == 6
    losses = [[row.split(",")[1] for row in metric_rows(run)] for run in (reference, other)]
    assert all(mine != theirs for mine, theirs in zip(*losses)), losses  # in every epoch
    assert summary(other)["test_loss"] != summary(reference)["test_loss"]


def test_seed_and_settings_are_stored_in_summary_and_checkpoint(reference):
    stored = summary(reference)["settings"]
    checkpoint = torch.load(reference / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["callbacks"]["RunRecord"]["settings"] == stored
    assert [stored[key] for key in ("seed", "lr", "batch_size", "epochs")] == [5, 0.05, 20, 3]
    assert stored["trainer"] == {"enable_progress_bar": False, **CPU_FLAGS}
    assert (
        checkpoint["hyper_parameters"]["lr"] == 0.05
        and checkpoint["datamodule_hyper_parameters"]["seed"] == 5
    )


def test_sigkilled_run_resumes_to_the_same_result(reference, tmp_path):
    """Killed in epoch 2 with two DataLoader workers; resumed; every metric of every epoch equals
    the reference's."""
    out = tmp_path / "killed"
    kill_after_first_checkpoint([*SMALL_RUN, "--num-workers", "2"], out, tmp_path / "killed.log")
    saved_epochs = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] + 1
    assert saved_epochs < 3 and not (out / "summary.json").exists()  # really killed before the end

    result = train_cli("--resume", str(out), "--num-workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    # rows appended to the killed run's, never restarted
    assert metric_rows(out) == metric_rows(reference)
    assert summary(out)["test_acc"] == summary(reference)["test_acc"]
    assert summary(out)["test_loss"] == summary(reference)["test_loss"]
    assert summary(out)["resumed_after_epochs"] == [saved_epochs]
    assert not list(out.glob("last*.ckpt"))[1:]  # still one last.ckpt, no last-v1.ckpt


def test_resume_takes_the_stored_settings(reference):
    settings, trainer_flags = parse_train_args(["--resume", str(reference)])
    stored = ("epochs", "batch_size", "lr", "seed", "train_size", "synthetic")
    assert [settings[key] for key in stored] == [3, 20, 0.05, 5, 105, True]
    assert settings["out"] == settings["resume"] == str(reference)
    assert trainer_flags == {"enable_progress_bar": False, **CPU_FLAGS}
    # where the data is and how it is read may change; options repeated with the stored value are
    # fine
    settings, trainer_flags = parse_train_args(
        [
            "--resume",
            str(reference),
            "--num-workers",
            "1",
            "--data-dir",
            "moved",
            "--lr",
            "0.05",
            "--enable-progress-bar",
            "true",
        ]
    )
    assert (settings["num_workers"], settings["data_dir"], settings["lr"]) == (1, "moved", 0.05)
    assert trainer_flags == {"enable_progress_bar": True, **CPU_FLAGS}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "0.1"], r"--lr 0.1 \(the run has 0.05\)"),
        (
            ["--epochs", "5", "--seed", "1"],
            r"--epochs 5 \(the run has 3\); --seed 1 \(the run has 5\)",
        ),
        (["--max-steps", "3"], r"--max-steps 3 \(the run has \(not set\)\)"),
        (["--out", "{elsewhere}"], "a resumed run writes into its own folder"),
    ],
)
def test_resume_refuses_options_that_change_the_run(reference, extra, message, tmp_path, capsys):
    extra = [a.replace("{elsewhere}", str(tmp_path)) for a in extra]
    assert train.main(["--resume", str(reference), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        f"error: --resume {reference} continues the run"
    )
    assert re.search(message, err), err


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.ckpt.bak").write_text("not this one")
    assert train.main(["--resume", str(tmp_path / "run")]) == 2
    assert "there is no last.ckpt to resume from" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path / "nowhere")]) == 2
    assert "there is no such run folder" in capsys.readouterr().err


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    original = LitClassifier.training_step

    def poisoned(
        self, batch, batch_idx
    ):  # epoch 2's second batch yields NaN, whose step makes every weight NaN
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch == 1 and batch_idx == 1 else loss

    monkeypatch.setattr(LitClassifier, "training_step", poisoned)
    out = tmp_path / "nan"
    argv = [
        "--synthetic",
        "--train-size",
        "50",
        "--test-size",
        "20",
        "--epochs",
        "3",
        "--batch-size",
        "10",
        "--lr",
        "0.05",
        "--num-workers",
        "0",
        "--enable-progress-bar",
        "false",
        "--log-every-n-steps",
        "1",
        "--out",
        str(out),
    ]
    assert train.main(argv) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1, errors
    assert "training diverged: the training loss became nan in epoch 2, step 7" in errors[0]
    assert f"{out / 'last.ckpt'} still holds epoch 1" in errors[0] and "--lr" in errors[0]
    checkpoint = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0  # epoch 1's, not overwritten by the NaN weights
    assert all(
        torch.isfinite(w).all() for w in checkpoint["state_dict"].values() if w.is_floating_point()
    )
    assert len(metric_rows(out)) == 1 and not (out / "summary.json").exists()


def test_diverging_cli_run_exits_with_one_error_line(tmp_path):
    out = tmp_path / "huge_lr"
    result = train_cli(
        "--synthetic",
        "--train-size",
        "50",
        "--test-size",
        "20",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--lr",
        "1e12",
        "--num-workers",
        "0",
        "--enable-progress-bar",
        "false",
        "--out",
        str(out),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert "training diverged" in errors[0] and "no checkpoint was written" in errors[0]
    assert not (out / "last.ckpt").exists()
