"""A new run never replaces another by accident: an --out folder that holds a run is refused (one
error line naming --resume and --overwrite); --overwrite replaces the old run, leaving no stale
files; an empty folder is fine."""

import json

import pytest
import torch

import train

TINY = [
    "--synthetic",
    "--train-size",
    "20",
    "--test-size",
    "10",
    "--epochs",
    "1",
    "--batch-size",
    "10",
    "--enable-progress-bar",
    "false",
    "--num-workers",
    "0",
]


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("old_run")  # exists and is empty: fine for a first run
    assert train.main(TINY + ["--lr", "0.1", "--out", str(out)]) == 0
    return out


def test_a_folder_holding_a_run_is_refused_and_left_alone(old_run, capsys):
    before = {path.name: path.stat().st_mtime_ns for path in old_run.iterdir()}
    assert train.main(TINY + ["--lr", "0.05", "--out", str(old_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(
        f"error: --out {old_run} already holds a run (last.ckpt, summary.json, metrics.csv)"
    )
    assert f"--resume {old_run}" in err and "--overwrite" in err
    assert {path.name: path.stat().st_mtime_ns for path in old_run.iterdir()} == before


def test_overwrite_replaces_the_old_run_without_leftovers(old_run, tmp_path):
    # a file the new run does not write
    (old_run / "lr_finder.png").write_bytes(b"from the old run")
    (old_run / "notes.txt").write_text("the user's own")
    assert train.main(TINY + ["--lr", "0.05", "--overwrite", "--out", str(old_run)]) == 0
    assert sorted(p.name for p in old_run.glob("*.ckpt")) == ["last.ckpt"]
    checkpoint = torch.load(old_run / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["lr"] == 0.05  # the second run's
    assert json.loads((old_run / "summary.json").read_text())["settings"]["lr"] == 0.05
    assert (
        not (old_run / "lr_finder.png").exists()
        and (old_run / "notes.txt").read_text() == "the user's own"
    )
    # the old run's logs went with it
    assert [p.name for p in (old_run / "logs").iterdir()] == ["version_0"]


def test_resume_and_overwrite_together_are_refused(old_run, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        train.main(["--resume", str(old_run), "--overwrite"])
    assert exit_info.value.code == 2
    assert (
        "--resume continues the run in RUN_DIR and --overwrite starts a new one there"
        in capsys.readouterr().err
    )
