"""Figures of a run: training curves, image grids (misclassified test images, GradCAM), confusion matrix."""
import copy
import csv
import math

import matplotlib

matplotlib.use("Agg")  # no display needed; notebooks still show the returned figures inline
import matplotlib.pyplot as plt
import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from analysis import per_class_accuracy
from data import denormalize


def read_metrics(path):
    """metrics.csv (one row per epoch) -> list of dicts of floats (empty cells become NaN)."""
    with open(path, newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(rows):
    """Loss and accuracy per epoch, train against validation, from metrics.csv rows (or its path)."""
    if not isinstance(rows, list):
        rows = read_metrics(rows)
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "acc")):
        for stage in ("train", "val"):
            ax.plot(epochs, [r[f"{stage}_{metric}"] for r in rows], marker="o", label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"loss": "cross-entropy", "acc": "accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Loss")
    axes[1].set_title(f"Accuracy (last val {rows[-1]['val_acc']:.2%})" if rows else "Accuracy")
    fig.tight_layout()
    return fig


def image_grid(images, titles, ncols=5, title=None, scale=2.0):
    """uint8 or [0, 1] float HWC images in a grid, one title each."""
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        return fig
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, titles):
        ax.imshow(np.asarray(image), interpolation="nearest")
        ax.set_title(text, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_misclassified(images, labels, index, predicted, confidence, classes, n=20):
    """The first `n` of the mistakes chosen by analysis.misclassified, titled true -> predicted (confidence)."""
    index = index[:n]
    titles = [f"true {classes[labels[i]]}\npred {classes[p]} ({c:.0%})"
              for i, p, c in zip(index, predicted[:n], confidence[:n])]
    return image_grid(images[index], titles, title=f"Misclassified test images, most confident first "
                                                  f"({len(index)} shown)")


def plot_class_samples(images, labels, classes, per_class=8, seed=0):
    """`per_class` randomly chosen images of every class, one row per class, the class named on the left."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.1 * per_class + 1, 1.1 * len(classes)),
                             squeeze=False)
    for row, name in enumerate(classes):
        members = np.flatnonzero(np.asarray(labels) == row)
        picked = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for ax in axes[row]:
            ax.axis("off")
        for ax, i in zip(axes[row], picked):
            ax.imshow(images[i], interpolation="nearest")
        axes[row, 0].text(-0.1, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center")
    fig.suptitle(f"{per_class} random training images per class")
    fig.tight_layout()
    return fig


def plot_augmentations(image, transform, mean, std, n=9, seed=0):
    """One uint8 HWC image and `n` draws of the training `transform` on it (de-normalised for display).

    Works on a copy of the transform, so seeding it here leaves the training pipeline's random state alone.
    """
    transform = copy.deepcopy(transform)
    transform.set_random_seed(seed)
    views = [denormalize(transform(image=image)["image"], mean, std).permute(1, 2, 0).numpy() for _ in range(n)]
    return image_grid([image] + views, ["original"] + [f"augmented {i + 1}" for i in range(n)],
                      ncols=min(n + 1, 5), title=f"The training augmentation drawn {n} times on one image")


def plot_lr_schedule(lrs, steps_per_epoch=None, title="OneCycle learning rate"):
    """Learning rate per optimizer step (e.g. from lr_finder.onecycle_schedule), epochs on the x axis if known."""
    steps = np.arange(len(lrs))
    x = steps / steps_per_epoch if steps_per_epoch else steps
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(x, lrs)
    ax.set_xlabel("epoch" if steps_per_epoch else "step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{title}: peak {max(lrs):.3g}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_gradcam(images, labels, index, predicted, confidence, predicted_overlays, true_overlays, classes, layer):
    """Mistakes in columns; rows: the image, GradCAM for the predicted class, GradCAM for the true class."""
    n = len(predicted_overlays)
    index = index[:n]
    titles = ([f"true {classes[labels[i]]}\npred {classes[p]} ({c:.0%})"
               for i, p, c in zip(index, predicted[:n], confidence[:n])]
              + [f"CAM {classes[p]} (pred)" for p in predicted[:n]]
              + [f"CAM {classes[labels[i]]} (true)" for i in index])
    return image_grid(list(images[index]) + list(predicted_overlays) + list(true_overlays), titles, ncols=max(n, 1),
                      title=f"GradCAM at {layer} of the most confident mistakes: where the network looked "
                            "for the class it chose, and for the right one")


def plot_confusion(confusion, classes):
    """Confusion matrix (torchmetrics' plot: rows true, columns predicted) beside the accuracy of each class."""
    fig, (ax_matrix, ax_acc) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [3, 2]})
    MulticlassConfusionMatrix(num_classes=len(classes)).plot(
        val=torch.as_tensor(confusion), ax=ax_matrix, labels=list(classes))
    ax_matrix.set_title(f"Confusion matrix ({int(confusion.sum())} test images)")
    accuracy = per_class_accuracy(confusion)
    positions = np.arange(len(classes))
    ax_acc.barh(positions, accuracy, color="tab:blue")
    for y, value in zip(positions, accuracy):
        ax_acc.text(min(value, 1.0) + 0.01 if not np.isnan(value) else 0.01, y,
                    "n/a" if np.isnan(value) else f"{value:.0%}", va="center", fontsize=9)
    total = np.trace(confusion) / max(confusion.sum(), 1)
    ax_acc.axvline(total, color="k", linestyle="--", linewidth=1, label=f"overall {total:.1%}")
    ax_acc.set(yticks=positions, yticklabels=classes, xlim=(0, 1.12), xlabel="accuracy", title="Accuracy per class")
    ax_acc.invert_yaxis()
    ax_acc.legend(loc="lower right")
    ax_acc.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
