"""The figures the notebooks show: class samples, augmentation preview, and the OneCycle schedule
of a LitClassifier."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from data import CLASSES
from lit_classifier import LitClassifier
from lr_finder import onecycle_schedule
from utils import plot_augmentations, plot_class_samples, plot_lr_schedule, train_transforms

MEAN, STD = (0.2, 0.5, 0.7), (0.25, 0.25, 0.25)


def shown_images(fig):
    return [ax.images[0].get_array() for ax in fig.axes if ax.images]


def test_class_samples_put_each_class_on_its_own_named_row():
    labels = np.repeat(np.arange(10), 12)
    grey = (labels * 20).astype(np.uint8)[:, None, None, None]
    images = np.repeat(grey, 32, 1).repeat(32, 2).repeat(3, 3)
    keep = (labels != 3) | (np.arange(len(labels)) % 12 < 2)  # class 3 has only 2 images
    fig = plot_class_samples(images[keep], labels[keep], CLASSES, per_class=5, seed=1)
    axes = np.array(fig.axes).reshape(10, 5)
    for row in range(10):
        shown = [ax.images[0].get_array() for ax in axes[row] if ax.images]
        assert len(shown) == (2 if row == 3 else 5)
        assert all(np.all(np.asarray(image) == row * 20) for image in shown), row
        assert [t.get_text() for t in axes[row, 0].texts] == [CLASSES[row]]
    plt.close(fig)


def test_augmentation_preview_shows_the_original_and_seeded_draws_with_a_cutout_hole():
    image = np.zeros((32, 32, 3), np.uint8) + np.array([200, 30, 90], np.uint8)
    transform = train_transforms(MEAN, STD, cutout=8)
    fig = plot_augmentations(image, transform, MEAN, STD, n=6, seed=3)
    original, *views = shown_images(fig)
    assert np.array_equal(original, image) and len(views) == 6
    holes = []
    for view in views:
        view = np.asarray(view)
        assert view.shape == (32, 32, 3) and 0 <= view.min() and view.max() <= 1
        # a constant image survives pad-crop and flip unchanged, except for the one 8x8 hole
        # filled with the mean
        in_hole = np.all(np.abs(view - np.round(np.array(MEAN) * 255) / 255) < 0.01, axis=-1)
        untouched = np.all(np.abs(view - image / 255) < 0.01, axis=-1)
        assert in_hole.sum() == 64 and (in_hole | untouched).all()
        holes.append(tuple(np.argwhere(in_hole)[0]))
    assert len(set(holes)) > 1  # the draws differ
    again = shown_images(plot_augmentations(image, transform, MEAN, STD, n=6, seed=3))[1:]
    assert all(np.array_equal(a, b) for a, b in zip(views, again))  # same seed, same preview
    plt.close("all")


def test_onecycle_schedule_is_the_modules_own_and_leaves_it_untouched():
    lit = LitClassifier("custom_resnet", lr=0.3, pct_start=0.25, div_factor=25)
    before = [p.detach().clone() for p in lit.parameters()]
    lrs = onecycle_schedule(lit, 200)
    assert len(lrs) == 200
    peak = int(np.argmax(lrs))
    # warm-up over the first quarter of the steps
    assert lrs[peak] == pytest.approx(0.3) and 45 <= peak <= 52
    assert lrs[0] == pytest.approx(0.3 / 25) and lrs[-1] < 1e-3
    assert np.all(np.diff(lrs[: peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) < 0)
    assert all(torch.equal(a, b) for a, b in zip(before, lit.parameters()))
    with pytest.raises(RuntimeError, match="not attached"):
        lit.trainer  # the stand-in trainer is gone again


def test_lr_schedule_plot_uses_epochs_when_given():
    lrs = [0.1, 0.2, 0.4, 0.3, 0.2, 0.1]
    fig = plot_lr_schedule(lrs, steps_per_epoch=2)
    line = fig.axes[0].lines[0]
    assert list(line.get_ydata()) == lrs and list(line.get_xdata()) == [0, 0.5, 1, 1.5, 2, 2.5]
    assert fig.axes[0].get_xlabel() == "epoch" and "0.4" in fig.axes[0].get_title()
    plt.close(fig)
