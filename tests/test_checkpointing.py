"""Atomic writes under SIGKILL, per-epoch seeding, epoch-keyed shuffling and augmentation,
checkpoint loading and the LR finder on a diverging model."""

import json
import multiprocessing
import os
import random
import re
import signal
import time

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import train
from data import CIFAR10DataModule
from lit_classifier import LitClassifier, load_classifier
from lr_finder import SKIP_START, find_lr
from plumbing.checkpointing import AtomicCheckpointIO, SeedEachEpoch
from plumbing.files import (
    FILE_MODE,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporary_files,
)
from tests.conftest import lowest_loss_lr

WEIGHTS = 2_000_000  # 8 MB of float32 per checkpoint: a write lasts long enough to be killed
ROWS = 20_000


def write_forever(folder):
    """The writer that gets killed: last.ckpt through the Trainer's CheckpointIO, summary.json and
    metrics.csv as train.py writes them, over and over, each version recognisable by its step number
    throughout."""
    torch.set_num_threads(1)  # a forked child; as in DataLoader workers
    io = AtomicCheckpointIO()
    step = 0
    while True:
        step += 1
        io.save_checkpoint(
            {"step": step, "weights": torch.full((WEIGHTS,), float(step))}, folder / "last.ckpt"
        )
        atomic_write_json(folder / "summary.json", {"step": step, "values": [step] * ROWS})
        atomic_write_text(
            folder / "metrics.csv", "epoch,loss\n" + "".join(f"{i},{step}\n" for i in range(ROWS))
        )


def read_back(folder):
    """The step of each file, asserting each is complete: one whole version, old or new, never a mix
    or a stub."""
    checkpoint = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["weights"].shape == (WEIGHTS,) and bool(
        (checkpoint["weights"] == checkpoint["step"]).all()
    )
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["values"] == [summary["step"]] * ROWS
    lines = (folder / "metrics.csv").read_text().splitlines()
    assert len(lines) == ROWS + 1 and len({line.split(",")[1] for line in lines[1:]}) == 1
    return checkpoint["step"], summary["step"], int(lines[1].split(",")[1])


def test_files_survive_sigkill_at_random_moments(tmp_path):
    fork = multiprocessing.get_context("fork")
    rng = random.Random(0)
    steps = []
    for kill in range(12):
        writer = fork.Process(target=write_forever, args=(tmp_path,), daemon=True)
        writer.start()
        try:
            if kill == 0:  # the first kill comes once every file has an old version to fall back on
                deadline = time.monotonic() + 120
                while not all(
                    (tmp_path / name).exists()
                    for name in ("last.ckpt", "summary.json", "metrics.csv")
                ):
                    assert time.monotonic() < deadline and writer.is_alive()
                    time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.5))
            os.kill(writer.pid, signal.SIGKILL)
        finally:
            writer.join(timeout=60)
        assert writer.exitcode == -signal.SIGKILL
        steps.append(read_back(tmp_path))
    # the writer got somewhere between kills: the kills hit different writes
    assert len(set(steps)) > 1, steps
    remove_stale_temporary_files(tmp_path)  # what a killed write leaves: .last.ckpt.xxxx.tmp etc.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt",
        "metrics.csv",
        "summary.json",
    ]
    assert (
        tmp_path / "summary.json"
    ).stat().st_mode & 0o777 == FILE_MODE  # not mkstemp's private 0600


def test_train_py_writes_its_checkpoints_through_atomic_io(tmp_path, monkeypatch):
    saved = []
    original = AtomicCheckpointIO.save_checkpoint

    def recording_save(self, checkpoint, path, storage_options=None):
        saved.append((checkpoint["epoch"], str(path)))
        return original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording_save)
    assert (
        train.main(
            [
                "--synthetic",
                "--train-size",
                "20",
                "--test-size",
                "10",
                "--epochs",
                "2",
                "--batch-size",
                "10",
                "--lr",
                "0.05",
                "--out",
                str(tmp_path),
                "--enable-progress-bar",
                "false",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    last = str(tmp_path / "last.ckpt")
    assert saved == [(0, last), (1, last)]  # after every epoch


class Draws(pl.LightningModule):
    """Records what each training step draws from Python, NumPy and torch."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.draws = []

    def training_step(self, batch, batch_idx):
        self.draws.append(
            (self.current_epoch, torch.rand(()).item(), float(np.random.rand()), random.random())
        )
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_draws(epochs, ckpt_path=None):
    module = Draws()
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[SeedEachEpoch(7)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(
        module, DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4), ckpt_path=ckpt_path
    )
    return module, trainer


def test_each_epoch_draws_the_same_numbers_after_a_resume(tmp_path):
    straight, _ = fit_draws(3)
    first, trainer = fit_draws(1)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    torch.rand(3), np.random.rand(3), random.random()  # a new session starts from any random state
    resumed, _ = fit_draws(3, ckpt_path=tmp_path / "epoch1.ckpt")
    assert [d[0] for d in resumed.draws] == [1, 1, 2, 2]
    assert first.draws + resumed.draws == straight.draws


def augmented_batches(num_workers, epoch):
    datamodule = CIFAR10DataModule(
        synthetic=True, train_size=40, test_size=10, batch_size=8, seed=3, num_workers=num_workers
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_shuffle_and_augmentation_depend_only_on_seed_and_epoch():
    in_process, with_workers, next_epoch = (
        augmented_batches(0, 1),
        augmented_batches(2, 1),
        augmented_batches(0, 2),
    )
    for (images, labels), (images_w, labels_w) in zip(in_process, with_workers, strict=True):
        assert torch.equal(images, images_w) and torch.equal(labels, labels_w)
    # another epoch: another order, other crops
    assert not torch.equal(in_process[0][0], next_epoch[0][0])
    # the same image in two epochs is augmented differently, in one epoch identically however it is
    # loaded
    assert not torch.equal(
        torch.cat([b[0] for b in in_process]).sum((1, 2, 3)).sort().values,
        torch.cat([b[0] for b in next_epoch]).sum((1, 2, 3)).sort().values,
    )


# -----------------------------------------------------------------------------------------------
# checkpoint loading
@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.ckpt"
    lit = LitClassifier("resnet18", lr=0.05)
    datamodule = CIFAR10DataModule(
        synthetic=True, train_size=20, test_size=10, batch_size=10, num_workers=0
    )
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(lit, datamodule=datamodule)
    trainer.save_checkpoint(path)
    return path, lit


def test_load_classifier_round_trip(resnet18_checkpoint):
    path, trained = resnet18_checkpoint
    loaded = load_classifier(path, expected_model="resnet18")
    assert not loaded.training and loaded.hparams.model_name == "resnet18"
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), trained.eval()(images))


def test_load_classifier_refuses_the_other_architecture(resnet18_checkpoint):
    path, _ = resnet18_checkpoint
    message = f"{re.escape(str(path))} holds a resnet18 model, not a custom_resnet"
    with pytest.raises(ValueError, match=message):
        load_classifier(path, expected_model="custom_resnet")


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda data: data[: len(data) // 2],
            "is not a readable checkpoint: the file is truncated or corrupt",
        ),
        (lambda data: data[:100], "is not a readable checkpoint: the file is truncated or corrupt"),
        (
            lambda data: b"<html>404 not found</html>",
            "is not a readable checkpoint: the file is truncated or corrupt",
        ),
    ],
)
def test_load_classifier_refuses_a_damaged_file(resnet18_checkpoint, tmp_path, damage, message):
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(damage(resnet18_checkpoint[0].read_bytes()))
    with pytest.raises(ValueError, match=message) as info:
        load_classifier(path)
    assert str(path) in str(info.value) and len(str(info.value).splitlines()) == 1


def test_load_classifier_refuses_foreign_checkpoints(resnet18_checkpoint, tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="is not a checkpoint written by train.py"):
        load_classifier(path)
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module, as torch.save(model) writes
    with pytest.raises(
        ValueError, match="holds Python objects other than tensors and plain containers"
    ):
        load_classifier(path)
    checkpoint = torch.load(resnet18_checkpoint[0], map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["model_name"] = "custom_resnet"  # label and weights disagree
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="does not fit a custom_resnet of this project"):
        load_classifier(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_classifier(tmp_path / "missing.ckpt")


# -----------------------------------------------------------------------------------------------
# LR finder
class Exp(nn.Module):
    """exp() of the logits: fine at small learning rates, inf and then NaN loss once the weights
    grow."""

    def forward(self, x):
        return torch.exp(x)


def diverging_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), Exp())
    data = TensorDataset(torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,)))
    return model, DataLoader(data, batch_size=32, shuffle=True)


def test_lr_finder_suggests_from_the_steps_before_the_loss_became_nan():
    model, loader = diverging_setup()
    suggested_lr, figure = find_lr(model, loader, end_lr=100, num_iter=100, device="cpu")
    title = figure.axes[0].get_title()
    blew_up_at = float(re.search(r"the loss became nan at lr (\S+);", title).group(1))
    # the rule: a tenth of the LR of the lowest smoothed loss among the finite steps (all plotted),
    # not torch-lr-finder's own pick, the step before the blow-up (the NaN gradient is "steepest")
    curve = figure.axes[0].lines[0]
    assert all(np.isfinite(line.get_ydata()).all() for line in figure.axes[0].lines)
    assert max(curve.get_xdata()) < blew_up_at and len(curve.get_xdata()) > SKIP_START
    assert suggested_lr == pytest.approx(lowest_loss_lr(figure) / 10, rel=1e-9)


def test_lr_finder_diverging_at_once_gives_a_reason():
    model, loader = diverging_setup()
    message = r"diverged after \d+ of 100 steps \(the loss became nan at lr .*set --lr"
    with pytest.raises(ValueError, match=message):
        find_lr(model, loader, start_lr=10, end_lr=1000, num_iter=100, device="cpu")
