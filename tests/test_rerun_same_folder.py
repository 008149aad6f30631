"""Rerunning into the same run folder (a notebook run twice, a repeated command) must not leave a stale last.ckpt."""
import torch

import train

TINY = ["--synthetic", "--train-size", "20", "--test-size", "10", "--epochs", "1", "--batch-size", "10",
        "--enable-progress-bar", "false", "--num-workers", "0"]


def test_second_run_replaces_last_ckpt(tmp_path):
    for lr in ("0.1", "0.05"):
        assert train.main(TINY + ["--lr", lr, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt"]
    checkpoint = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["lr"] == 0.05  # the second run's
