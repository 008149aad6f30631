"""Training on several processes (DDP): each process takes its own disjoint share of every global
batch, on both data paths; `train.py --accelerator cpu --devices 2 --strategy ddp` (gloo) trains,
tests and writes one run folder whose metrics cover both processes, learns as one process does with
the same global batch, and resumes exactly after both processes are SIGKILLed. The 2-process runs
are few and tiny: starting them is most of their time."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data import CIFAR10DataModule, EpochSampler, make_synthetic
from lit_classifier import LitClassifier
from model import to_input
from plumbing import hardware
from plumbing.gpu_data import DeviceBatches
from tests.conftest import (
    ROOT,
    RUN_FILES,
    SMALL_RUN,
    assert_real_figures,
    figure_pixels,
    kill_after_first_checkpoint,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# ---------------------------------------------------------------------------------- the shares,
# without processes
@pytest.mark.parametrize("size, batch_size", [(100, 20), (105, 20), (81, 40)])
def test_epoch_sampler_shares_make_the_one_device_batches(size, batch_size):
    one = [draw.index for draw in EpochSampler(size, seed=3, epoch=4)]
    shares = [
        list(EpochSampler(size, 3, epoch=4, num_replicas=2, rank=rank, batch_size=batch_size))
        for rank in range(2)
    ]
    assert [len(share) for share in shares] == [
        len(EpochSampler(size, 3, 4, 2, rank, batch_size)) for rank in (0, 1)
    ]
    local = batch_size // 2
    batches = [
        [[d.index for d in share[i : i + local]] for i in range(0, len(share), local)]
        for share in shares
    ]
    full = size // batch_size  # the last partial global batch is dropped, as training drops it
    assert len(batches[0]) == len(batches[1]) == full  # the same steps on both processes
    for step, (mine, theirs) in enumerate(zip(*batches)):
        assert mine + theirs == one[step * batch_size : (step + 1) * batch_size]
    assert set(sum(batches[0], [])).isdisjoint(sum(batches[1], []))
    assert all(d.epoch == 4 for d in shares[0])
    other = EpochSampler(size, 3, epoch=0, num_replicas=2, rank=0, batch_size=batch_size)
    # what Lightning calls on it (it is a DistributedSampler, so Lightning does not wrap it)
    other.set_epoch(4)
    assert [d.index for d in other] == [d.index for d in shares[0]]


@pytest.mark.parametrize("size", [100, 105, 81])
def test_device_batches_shares_are_the_one_device_batch_exactly(size):
    images, labels = make_synthetic(size, seed=1)
    labels = np.arange(size)  # labels that name the image, to follow it

    def batches(train, replicas=1, rank=0):
        return list(
            DeviceBatches(
                images,
                labels,
                MEAN,
                STD,
                batch_size=20,
                normalize=to_input,
                train=train,
                seed=2,
                epoch=3,
                num_replicas=replicas,
                rank=rank,
            )
        )

    one = batches(train=True)
    shares = [batches(True, 2, rank) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(one) == size // 20  # full global batches only
    for (x, y), (x0, y0), (x1, y1) in zip(one, *shares):  # images, augmentations, order alike
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    evaluated = [batches(False, 2, rank) for rank in range(2)]
    assert [len(share) for share in evaluated] == [
        len(DeviceBatches(images, labels, MEAN, STD, 20, to_input, num_replicas=2, rank=rank))
        for rank in (0, 1)
    ]
    order = torch.cat([y for share in evaluated for _, y in share])
    assert torch.equal(order, torch.arange(size))  # each image evaluated once, by one process
    # batches of batch_size / processes
    assert max(len(y) for share in evaluated for _, y in share) == 10


def test_datamodule_shards_for_the_trainers_processes():
    trainer = SimpleNamespace(
        world_size=2,
        global_rank=1,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        fit_loop=SimpleNamespace(
            epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0))
        ),
    )
    for augment_on in ("loader", "device"):
        dm = CIFAR10DataModule(
            synthetic=True,
            train_size=100,
            test_size=30,
            batch_size=20,
            num_workers=0,
            augment_on=augment_on,
        )
        dm.setup()
        dm.trainer = trainer
        train_batches, test_batches = list(dm.train_dataloader()), list(dm.test_dataloader())
        # half of each global batch, half the test split
        assert [len(labels) for _, labels in train_batches] == [10] * 5, augment_on
        assert sum(len(labels) for _, labels in test_batches) == 15, augment_on
        # the whole split, for the plots
        assert sum(len(labels) for _, labels in dm.predict_dataloader()) == 30
    dm = CIFAR10DataModule(
        synthetic=True, train_size=100, test_size=30, batch_size=25, num_workers=0
    )
    dm.setup()
    dm.trainer = trainer
    message = "--batch-size 25 is the global batch and must split evenly between the 2"
    with pytest.raises(ValueError, match=message):
        dm.train_dataloader()


# -------------------------------------------------------------------------------------------
# train.py on 2 processes SMALL_RUN: 105 images in global batches of 20 (10 per process; the last 5
# are dropped, as on one device): 5 steps an epoch; a test split of 45 split 23 + 22, so a metric
# that is not gathered from both processes shows.
RUN = SMALL_RUN + ["--num-workers", "0"]
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]


def train_cli(*argv):
    return subprocess.run(
        [sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def metric_rows(run_dir):
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    return [dict(zip(lines[0].split(","), map(float, line.split(",")))) for line in lines[1:]]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """An uninterrupted 2-process run, started as a user would (Lightning starts rank 1 by running
    train.py again)."""
    out = tmp_path_factory.mktemp("ddp")
    result = train_cli(*RUN, *DDP, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test accuracy") == 1  # printed by rank 0 only
    return out


def test_ddp_run_writes_one_run_folder(ddp_run, small_run):
    for name in RUN_FILES:
        assert (ddp_run / name).stat().st_size > 0, name
    assert_real_figures(ddp_run)
    # rank 0 drew its own run's curves (the two runs' metrics differ after the first step)
    curves = [figure_pixels(run / "curves.png") for run in (ddp_run, small_run)]
    assert not np.array_equal(*curves)
    assert [p.name for p in (ddp_run / "logs").iterdir()] == ["version_0"]  # one logger: rank 0's
    info = summary(ddp_run)
    assert (info["devices"], info["batch_size"], info["train_images"], info["test_images"]) == (
        2,
        20,
        105,
        45,
    )
    assert info["settings"]["trainer"] == {
        "enable_progress_bar": False,
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "precision": hardware.fast_precision(cuda=False),
    }
    # The same optimizer steps and LR schedule as one process: each process saw its half of each
    # global batch (a process that saw the whole data set would take twice the steps), and the LR is
    # not rescaled.
    steps = [
        torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
        for run in (ddp_run, small_run)
    ]
    assert steps == [3 * 5, 3 * 5]
    lrs = [[row["lr"] for row in metric_rows(run)] for run in (ddp_run, small_run)]
    assert lrs[0] == lrs[1]


def test_ddp_metrics_cover_both_processes(ddp_run):
    """Evaluated again in one process, the checkpoint gives exactly the test metrics the two
    processes reported."""
    lit = LitClassifier.load_from_checkpoint(ddp_run / "last.ckpt", map_location="cpu")
    dm = CIFAR10DataModule(
        synthetic=True, train_size=105, test_size=45, seed=5, batch_size=20, num_workers=0
    )
    dm.setup()
    info = summary(ddp_run)
    # in the precision the run tested in (bf16 on a CPU that computes it natively)
    bf16 = info["precision"] == "bf16-mixed"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, labels = map(
            torch.cat, zip(*[(lit.model.eval()(x), y) for x, y in dm.test_dataloader()])
        )
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    assert float((logits.argmax(1) == labels).float().mean()) == pytest.approx(
        info["test_acc"], abs=1e-6
    )
    assert float(loss) == pytest.approx(info["test_loss"], rel=1e-4)
    assert metric_rows(ddp_run)[-1]["val_acc"] == pytest.approx(info["test_acc"], abs=1e-6)


def test_two_processes_learn_as_one_does_with_the_same_global_batch(ddp_run, small_run):
    """Same data, batches, augmentation distribution, steps and LR; what differs is BatchNorm, which
    normalises each process's 10 images with their own statistics where one process uses all 20, so
    the runs part after the first step. The tolerance is what the seed alone moves: seeds 5, 6, 7
    end at 0.91, 0.89, 0.98 in one process (and 0.91, 0.89 in two). Chance is 0.1; a run that
    learned nothing, or from half the data, ends far below."""
    two, one = summary(ddp_run), summary(small_run)
    assert one["test_acc"] > 0.6 and abs(two["test_acc"] - one["test_acc"]) <= 0.1, (
        two["test_acc"],
        one["test_acc"],
    )
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=0.25)


def test_train_metrics_count_both_processes_images(ddp_run):
    """train_acc counts the epoch's 100 trained images (5 global batches of 20): k / 100. Rank 0
    alone sees 50, so its own accuracy is j / 50, an even count of hundredths in every epoch; the
    run's has an odd one."""
    counts = [row["train_acc"] * 100 for row in metric_rows(ddp_run)]
    assert all(abs(c - round(c)) < 1e-3 and 0 < c < 100 for c in counts), counts
    assert any(round(c) % 2 for c in counts), counts


def test_sigkilled_ddp_run_resumes_to_the_same_result(ddp_run, tmp_path):
    """Both processes SIGKILLed at once (their process group, as a preempted machine loses them)
    half a second after epoch 1's checkpoint appeared; `--resume` starts two processes again (the
    stored settings say so) and every metric of every epoch, and the test metrics, equal the
    uninterrupted run's."""
    out = tmp_path / "killed"
    kill_after_first_checkpoint([*RUN, *DDP], out, tmp_path / "killed.log")
    saved_epochs = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] + 1
    assert saved_epochs < 3 and not (out / "summary.json").exists()  # really killed before the end

    result = train_cli("--resume", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(out)["devices"] == 2 and summary(out)["resumed_after_epochs"] == [saved_epochs]
    assert (out / "metrics.csv").read_text() == (ddp_run / "metrics.csv").read_text()
    assert summary(out)["test_acc"] == summary(ddp_run)["test_acc"]
    assert summary(out)["test_loss"] == summary(ddp_run)["test_loss"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--strategy", "ddp_spawn"],
            "--strategy ddp_spawn trains in processes started from inside this one",
        ),
        (["--strategy", "ddp_notebook"], "use --strategy ddp"),
        (
            ["--strategy", "ddp", "--batch-size", "25"],
            "--batch-size 25 is the global batch and must split evenly",
        ),
    ],
)
def test_unsupported_multi_process_settings_are_one_clear_line(argv, message, tmp_path, capsys):
    import train

    quick = [
        "--synthetic",
        "--train-size",
        "50",
        "--test-size",
        "10",
        "--epochs",
        "1",
        "--num-workers",
        "0",
    ]
    assert (
        train.main(
            quick + ["--accelerator", "cpu", "--devices", "2", *argv, "--out", str(tmp_path)]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "last.ckpt").exists()
