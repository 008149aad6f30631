"""The design card of the course: dataset statistics, transforms, predictions and plotting.

- statistics: per-channel mean/std of the training images (cached beside the data);
- transforms: the albumentations training augmentation (reflect-pad + crop, flip, cutout) and
  the evaluation transform, both ending in normalisation;
- predictions: softmax outputs of a model, its most confident mistakes, the confusion matrix;
- plotting: curves, image grids (samples, augmentations, mistakes, GradCAM), the LR schedule,
  the confusion matrix.

Every plot function returns a matplotlib figure; the caller shows it (notebook) or saves it
(train.py, app).
"""

import copy
import csv
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else albumentations asks PyPI on import
# In a Jupyter without ipywidgets, tqdm.auto (imported by albumentations) and rich (Lightning's
# progress bar) warn before they fall back to text progress bars, which work
warnings.filterwarnings("ignore", "IProgress not found")
warnings.filterwarnings("ignore", 'install "ipywidgets" for Jupyter support')

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from matplotlib.figure import Figure  # outside pyplot: nothing shown twice, nothing kept open
from matplotlib.ticker import MaxNLocator
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.classification import multiclass_confusion_matrix

from model import class_probabilities, eval_mode, to_input
from plumbing.files import atomic_write_json

STATS_FILE = "channel_stats.json"


# --------------------------------------------------------------------------------------- statistics
def channel_stats(images, chunk=5000):
    """Per-channel mean and std of uint8 NHWC images, scaled to [0, 1] (float64 sums, chunked to
    bound memory)."""
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for start in range(0, len(images), chunk):
        pixels = images[start : start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(mean.tolist()), tuple(std.tolist())


def fingerprint(images) -> str:
    return hashlib.sha1(np.ascontiguousarray(images).data).hexdigest()


def cached_channel_stats(folder, images):
    """Mean/std of the training split, cached in `folder/channel_stats.json` and recomputed if the
    data changed."""
    path = Path(folder) / STATS_FILE
    key = fingerprint(images)
    try:
        cached = json.loads(path.read_text())
        if cached.get("fingerprint") == key:
            return tuple(cached["mean"]), tuple(cached["std"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or an unreadable one: compute afresh
    mean, std = channel_stats(images)
    try:
        atomic_write_json(
            path, {"fingerprint": key, "images": len(images), "mean": mean, "std": std}
        )
    except OSError:
        pass  # a read-only data folder only costs the recomputation next time
    return mean, std


# --------------------------------------------------------------------------------------- transforms
def train_transforms(mean, std, cutout=8, pad=4):
    """The training augmentation: each epoch shows every image a little differently, so the network
    learns what stays the same (the object) rather than memorising the pixels.

    - reflect-pad by `pad` + random 32x32 crop: the object moves by up to `pad` pixels, as objects
      sit anywhere in a photo; reflecting (not black borders) keeps the edges looking natural;
    - horizontal flip half the time: a mirrored car is still a car (a vertical flip would not be);
    - cutout, one `cutout` x `cutout` hole filled with the dataset mean: hides part of the object,
      so the network cannot rely on one tell-tale patch (DeVries & Taylor, 2017);
    - normalise: each channel to mean 0, std 1, as every evaluated image is too.
    """
    steps = [
        A.PadIfNeeded(32 + 2 * pad, 32 + 2 * pad, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(32, 32),
        A.HorizontalFlip(p=0.5),
    ]
    if cutout:
        fill = tuple(round(m * 255) for m in mean)
        steps.append(
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(cutout, cutout),
                hole_width_range=(cutout, cutout),
                fill=fill,
                p=1.0,
            )
        )
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)


def eval_transforms(mean, std):
    return A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])


def denormalize(tensor, mean, std):
    """Normalised CHW (or NCHW) tensor -> float tensor in [0, 1], for display."""
    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return (tensor * std + mean).clamp(0, 1)


# -------------------------------------------------------------------------------------- predictions
def predict(model, loader, device=None):
    """Class probabilities and labels for every batch of `loader`; the model's train/eval mode is
    restored."""
    device = device or next(model.parameters()).device
    probs, labels = [], []
    with eval_mode(model):
        for images, targets in loader:
            probs.append(class_probabilities(model, images.to(device)).cpu())
            labels.append(torch.as_tensor(targets))
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def predict_images(model, images, mean, std, batch_size=256):
    """Class probabilities for uint8 HWC images (uploads, a slice of the test set), no DataLoader
    needed."""
    device = next(model.parameters()).device
    probs = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            batch = torch.as_tensor(images[start : start + batch_size]).to(device)
            probs.append(class_probabilities(model, to_input(batch, mean, std)).cpu())
    return torch.cat(probs).numpy()


class Mistakes(NamedTuple):
    """The wrong predictions, most confident first: the images' indices, the class predicted for
    each, and the probability it was given."""

    index: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray

    def first(self, n):
        return Mistakes(*(field[:n] for field in self))


def misclassified(probs, labels):
    """The Mistakes in `probs` (N x classes) against the true `labels`."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return Mistakes(wrong[order], predicted[wrong[order]], confidence[order])


def mistake_titles(labels, mistakes, classes):
    """One caption per mistake: the true class, the predicted one and its probability."""
    return [f"true {classes[labels[i]]}\npred {classes[p]} ({c:.0%})" for i, p, c in zip(*mistakes)]


def confusion_matrix(probs, labels):
    """Counts of (true class, predicted class) pairs: rows are true classes, columns predictions
    (torchmetrics)."""
    matrix = multiclass_confusion_matrix(
        torch.as_tensor(probs), torch.as_tensor(labels), num_classes=probs.shape[1]
    )
    return matrix.numpy()


def per_class_accuracy(confusion):
    """Share of each true class predicted correctly (the diagonal over the row sums); NaN for an
    absent class."""
    totals = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


# ----------------------------------------------------------------------------------------- plotting
def read_metrics(path):
    """metrics.csv (one row per epoch) -> list of dicts of floats (empty cells become NaN)."""
    with open(path, newline="") as f:
        return [
            {k: float(v) if v != "" else math.nan for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def plot_curves(rows):
    """Loss and accuracy per epoch, train against validation, from metrics.csv rows (or its
    path)."""
    if not isinstance(rows, list):
        rows = read_metrics(rows)
    # an epoch without validation has empty cells
    rows = [{k: math.nan if v in ("", None) else v for k, v in row.items()} for row in rows]
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "acc")):
        for stage in ("train", "val"):
            ax.plot(epochs, [r[f"{stage}_{metric}"] for r in rows], marker="o", label=stage)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel({"loss": "cross-entropy", "acc": "accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Loss")
    validated = [r["val_acc"] for r in rows if not math.isnan(r["val_acc"])]
    axes[1].set_title(f"Accuracy (last val {validated[-1]:.2%})" if validated else "Accuracy")
    fig.tight_layout()
    return fig


def image_grid(images, titles, ncols=5, title=None, scale=2.0):
    """uint8 or [0, 1] float HWC images in a grid, one title each."""
    n = len(images)
    if n == 0:
        fig = Figure(figsize=(4, 1))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        return fig
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(scale * ncols, scale * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, titles):
        ax.imshow(np.asarray(image), interpolation="nearest")
        ax.set_title(text, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_misclassified(images, labels, mistakes, classes, n=20):
    """The first `n` Mistakes (utils.misclassified), titled true -> predicted (confidence)."""
    mistakes = mistakes.first(n)
    return image_grid(
        images[mistakes.index],
        mistake_titles(labels, mistakes, classes),
        title=f"Misclassified test images, most confident first ({len(mistakes.index)} shown)",
    )


def plot_class_samples(images, labels, classes, per_class=8, seed=0):
    """`per_class` randomly chosen images of every class, one row per class, the class named on
    the left."""
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(1.1 * per_class + 1, 1.1 * len(classes)))
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    for row, name in enumerate(classes):
        members = np.flatnonzero(np.asarray(labels) == row)
        picked = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for ax in axes[row]:
            ax.axis("off")
        for ax, i in zip(axes[row], picked):
            ax.imshow(images[i], interpolation="nearest")
        axes[row, 0].text(
            -0.1, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center"
        )
    fig.suptitle(f"{per_class} random training images per class")
    fig.tight_layout()
    return fig


def plot_augmentations(image, transform, mean, std, n=9, seed=0):
    """One uint8 HWC image and `n` draws of the training `transform` on it (de-normalised for
    display).

    Works on a copy of the transform, so seeding it here leaves the training pipeline's random
    state alone.
    """
    transform = copy.deepcopy(transform)
    transform.set_random_seed(seed)
    views = [
        denormalize(transform(image=image)["image"], mean, std).permute(1, 2, 0).numpy()
        for _ in range(n)
    ]
    return image_grid(
        [image] + views,
        ["original"] + [f"augmented {i + 1}" for i in range(n)],
        ncols=min(n + 1, 5),
        title=f"The training augmentation drawn {n} times on one image",
    )


def plot_lr_schedule(lrs, steps_per_epoch=None, title="OneCycle learning rate"):
    """Learning rate per optimizer step (e.g. from lr_finder.onecycle_schedule), epochs on the x
    axis if known."""
    steps = np.arange(len(lrs))
    x = steps / steps_per_epoch if steps_per_epoch else steps
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(x, lrs)
    ax.set_xlabel("epoch" if steps_per_epoch else "step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{title}: peak {max(lrs):.3g}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_gradcam(images, labels, mistakes, overlays, classes, layer):
    """The first mistakes in columns; rows: the image, GradCAM for the predicted class, GradCAM for
    the true class. `overlays`: (predicted, true) from gradcam.mistake_overlays."""
    predicted_overlays, true_overlays = overlays
    n = len(predicted_overlays)
    mistakes = mistakes.first(n)
    titles = (
        mistake_titles(labels, mistakes, classes)
        + [f"CAM {classes[p]} (pred)" for p in mistakes.predicted]
        + [f"CAM {classes[labels[i]]} (true)" for i in mistakes.index]
    )
    pictures = list(images[mistakes.index]) + list(predicted_overlays) + list(true_overlays)
    return image_grid(
        pictures,
        titles,
        ncols=max(n, 1),
        title=f"GradCAM at {layer} of the most confident mistakes: where the network "
        "looked for the class it chose, and for the right one",
    )


def plot_confusion(confusion, classes):
    """Confusion matrix (torchmetrics' plot: rows true, columns predicted) beside the accuracy of
    each class."""
    fig = Figure(figsize=(15, 6.5))
    ax_matrix, ax_acc = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    MulticlassConfusionMatrix(num_classes=len(classes)).plot(
        val=torch.as_tensor(confusion), ax=ax_matrix, labels=list(classes)
    )
    ax_matrix.set_title(f"Confusion matrix ({int(confusion.sum())} test images)")
    accuracy = per_class_accuracy(confusion)
    positions = np.arange(len(classes))
    ax_acc.barh(positions, accuracy, color="tab:blue")
    for y, value in zip(positions, accuracy):
        ax_acc.text(
            min(value, 1.0) + 0.01 if not np.isnan(value) else 0.01,
            y,
            "n/a" if np.isnan(value) else f"{value:.0%}",
            va="center",
            fontsize=9,
        )
    total = np.trace(confusion) / max(confusion.sum(), 1)
    ax_acc.axvline(total, color="k", linestyle="--", linewidth=1, label=f"overall {total:.1%}")
    ax_acc.set(
        yticks=positions,
        yticklabels=classes,
        xlim=(0, 1.12),
        xlabel="accuracy",
        title="Accuracy per class",
    )
    ax_acc.invert_yaxis()
    ax_acc.legend(loc="lower right")
    ax_acc.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
