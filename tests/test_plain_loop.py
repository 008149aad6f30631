"""Notebook 3's hand-written loop and Lightning's trainer.fit train the same network the same way.

The test runs the notebook's own code (its imports, train_epoch, test_epoch, optimizer and
training-loop cells, read with nbformat) and LitClassifier under pl.Trainer from the same initial
weights, on the same augmented batches in the same order, and compares the losses and accuracies of
every epoch."""

import copy
import sys
from pathlib import Path

import nbformat
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from data import EpochSampler, ImageArrayDataset, make_synthetic
from lit_classifier import LitClassifier
from model import CustomResNet
from recipes import RECIPES
from utils import channel_stats, eval_transforms, train_transforms

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_resnet9_pytorch.ipynb"
RECIPE = RECIPES["course"]
EPOCHS, BATCH, PEAK_LR, SEED = 2, 16, 2e-3, 0
# Both paths do the same float32 operations in the same order, so they differ by rounding only: the
# loop sums loss x batch size in Python floats (float64), torchmetrics' MeanMetric in float32.
# Measured on the CPU: at most 2.4e-7 on a loss; the accuracies are the same counts of images
# (difference 0).
LOSS_TOLERANCE, ACCURACY_TOLERANCE = 1e-5, 1e-6


def notebook_cells(*markers):
    """The source of the notebook's code cells that contain each marker, in notebook order, magics
    left out."""
    cells = [
        cell.source
        for cell in nbformat.read(NOTEBOOK, as_version=4).cells
        if cell.cell_type == "code"
    ]
    found = []
    for marker in markers:
        matches = [source for source in cells if marker in source]
        assert len(matches) == 1, f"{len(matches)} code cells of {NOTEBOOK.name} contain {marker!r}"
        found.append(matches[0])
    return [
        "\n".join(line for line in source.splitlines() if not line.startswith(("%", "!")))
        for source in found
    ]


def data_sets():
    """Small synthetic train and test sets, the training one augmented as the recipe says."""
    train_images, train_labels = make_synthetic(64, seed=1)
    test_images, test_labels = make_synthetic(32, seed=2)
    mean, std = channel_stats(train_images)
    return (
        ImageArrayDataset(
            train_images, train_labels, train_transforms(mean, std, cutout=RECIPE["cutout"])
        ),
        ImageArrayDataset(test_images, test_labels, eval_transforms(mean, std)),
    )


def loaders(train_set, test_set):
    """A fresh pair gives the same batches in the same order, augmented the same way: EpochSampler
    draws each epoch's shuffle and augmentations from (seed, epoch), which the plain loop counts up
    and Lightning sets. (shuffle=True would draw from a running random state, which Lightning's loop
    consumes in another order.)"""
    sampler = EpochSampler(len(train_set), SEED, batch_size=BATCH)  # drops the last partial batch
    return DataLoader(train_set, BATCH, sampler=sampler), DataLoader(test_set, BATCH)


def notebook_loop(initial, train_set, test_set):
    """history (one row per epoch) of the notebook's cells run on these data and settings."""
    model = CustomResNet()
    model.load_state_dict(initial)
    train_loader, test_loader = loaders(train_set, test_set)
    namespace = dict(
        sys=sys,
        model=model,
        train_loader=train_loader,
        test_loader=test_loader,  # sys: set-up cell
        peak_lr=PEAK_LR,
        recipe=RECIPE,
        EPOCHS=EPOCHS,
        PRECISION="32-true",
        device=torch.device("cpu"),
    )
    for source in notebook_cells(
        "from tqdm import tqdm",
        "def train_epoch",
        "def test_epoch",
        "OneCycleLR(",
        "for epoch in range",
    ):
        exec(source, namespace)
    return namespace["history"]


class EpochRows(pl.Callback):
    """The epoch's logged metrics; in Lightning 2 its validation has run by on_train_epoch_end."""

    def __init__(self):
        self.rows = []

    def on_train_epoch_end(self, trainer, lit):
        self.rows.append({name: float(value) for name, value in trainer.callback_metrics.items()})


def lightning_fit(initial, train_set, test_set):
    lit = LitClassifier.from_settings(RECIPE, lr=PEAK_LR, tta=False)
    lit.model.load_state_dict(initial)
    rows = EpochRows()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        precision="32-true",
        logger=False,
        callbacks=[rows],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    train_loader, test_loader = loaders(train_set, test_set)
    trainer.fit(lit, train_dataloaders=train_loader, val_dataloaders=test_loader)
    return rows.rows


def test_the_notebooks_loop_and_lightning_agree_epoch_by_epoch():
    torch.manual_seed(SEED)
    initial = copy.deepcopy(CustomResNet().state_dict())
    train_set, test_set = data_sets()
    loop = notebook_loop(initial, train_set, test_set)
    fit = lightning_fit(initial, train_set, test_set)
    assert len(loop) == len(fit) == EPOCHS
    for mine, theirs in zip(loop, fit):
        for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
            tolerance = LOSS_TOLERANCE if name.endswith("loss") else ACCURACY_TOLERANCE
            assert mine[name] == pytest.approx(theirs[name], abs=tolerance), (mine["epoch"], name)
    # it trained: the comparison is not of two idle runs
    assert loop[-1]["train_loss"] < loop[0]["train_loss"]
