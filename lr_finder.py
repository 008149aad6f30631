"""LR range test (Leslie Smith) with torch-lr-finder: the suggested LR becomes the OneCycle peak."""

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from matplotlib.figure import Figure  # a figure outside pyplot: shown once where it is returned
from torch import nn
from torch.utils.data import DataLoader
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from lit_classifier import make_optimizer
from plumbing.files import atomic_write_json
from recipes import DEFAULT

# torch-lr-finder's defaults: the first steps are noise, the last ones the blow-up
SKIP_START, SKIP_END = (10, 5)


def find_lr(
    model,
    train_loader,
    optimizer=DEFAULT["optimizer"],
    weight_decay=DEFAULT["weight_decay"],
    momentum=DEFAULT["momentum"],
    start_lr=1e-5,
    end_lr=10.0,
    num_iter=100,
    device=None,
    precision="32-true",
    channels_last=False,
):
    """Run the range test on a copy of `model` (the model itself is left untouched).

    The test trains for `num_iter` steps while the LR grows exponentially from `start_lr` to
    `end_lr`: the loss first barely moves (LR too small), then falls faster and faster, then blows
    up (LR too large). Returns (suggested_lr, figure): a tenth of the LR where the smoothed loss was
    lowest (see `suggest`), and the loss-vs-LR curve with both marked. Steps after the loss became
    NaN/inf are dropped (torch-lr-finder runs on through NaN); too few finite steps left is a
    ValueError.

    `precision` (Lightning's name: "bf16-mixed", "16-mixed", else float32) and `channels_last` are
    the training run's, so the test runs as fast as training does, on the network training runs."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), optimizer, start_lr, momentum, weight_decay)
    mixed = {}  # torch-lr-finder's autocast path; float16 needs loss scaling, bf16 does not
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(str(precision).split("-")[0])
    if dtype is not None:
        device_type = torch.device(device).type
        mixed = dict(
            amp_backend="torch",
            amp_config=dict(device_type=device_type, dtype=dtype),
            grad_scaler=torch.amp.GradScaler(device_type, enabled=dtype == torch.float16),
        )
    finder = LRFinder(model, opt, nn.CrossEntropyLoss(), device=device, **mixed)
    if not isinstance(
        train_loader, DataLoader
    ):  # torch-lr-finder takes other iterables (DeviceBatches) wrapped
        train_loader = TrainDataLoaderIter(train_loader)
    finder.range_test(train_loader, end_lr=end_lr, num_iter=num_iter, step_mode="exp")
    lrs, losses = finder.history["lr"], finder.history["loss"]
    finite = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    diverged = (
        f"the loss became {losses[finite]} at lr {lrs[finite]:.2e}" if finite < len(losses) else ""
    )
    if (
        finite < SKIP_START + SKIP_END + 2
    ):  # torch-lr-finder's own stop (loss > 5x its best) can also come this early
        why = diverged or f"the loss rose past 5 times its best at lr {lrs[-1]:.2e}"
        raise ValueError(
            f"the LR range test diverged after {finite} of {num_iter} steps ({why}), too few to "
            f"suggest a peak LR: set --lr yourself (below {lrs[min(finite, len(lrs) - 1)]:.2e}) "
            "instead of using --lr-find, or start the test at a lower LR"
        )
    lrs, losses = np.array(lrs[:finite]), np.array(losses[:finite])
    suggested_lr, lowest = suggest(lrs, losses)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    shown = slice(SKIP_START, max(len(losses) - SKIP_END, lowest + 1))
    ax.plot(lrs[shown], losses[shown])
    ax.axvline(
        lrs[lowest],
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"lowest loss at {lrs[lowest]:.2e}",
    )
    ax.axvline(
        suggested_lr,
        color="red",
        linewidth=1.5,
        label=f"suggested peak: a tenth, {suggested_lr:.2e}",
    )
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)")
    ax.legend()
    title = f"LR range test: suggested peak {suggested_lr:.2e}"
    ax.set_title(f"{title}\n({diverged}; later steps dropped)" if diverged else title)
    return suggested_lr, fig


def suggest(lrs, losses):
    """(suggested peak LR, step of the lowest loss) of a range test: a tenth of the LR where the
    smoothed loss was lowest, safely below the blow-up that follows (the rule of fastai's early LR
    finder). torch-lr-finder's own pick, the steepest descent, fell on the ResNet-9's first quick
    drop or past the blow-up."""
    losses = np.asarray(losses, dtype=float)
    lowest = int(np.argmin(losses))
    if lowest < SKIP_START:
        raise ValueError(
            f"the LR range test's loss was lowest at step {lowest + 1} of {len(losses)}, before "
            f"any "
            "descent to suggest a peak from: start the test at a lower LR, or set --lr yourself"
        )
    return float(lrs[lowest]) / 10, lowest


def save_suggestion(path, suggested_lr, **context):
    """Keep a range test's suggestion in a small JSON file, with what it depends on (recipe, batch
    size, data...)."""
    atomic_write_json(path, {"suggested_lr": suggested_lr, **context})


def load_suggestion(path, **context):
    """The suggestion saved by save_suggestion if the file exists and every `context` value matches,
    else None."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or any(
        saved.get(key) != value for key, value in context.items()
    ):
        return None
    return saved.get("suggested_lr")


def onecycle_schedule(lit, total_steps):
    """The learning rate of each of `total_steps` optimizer steps under
    `lit.configure_optimizers()`, without training.

    configure_optimizers only reads `trainer.estimated_stepping_batches`, so a stand-in trainer
    supplies that number and the plotted schedule is exactly the one a run would use."""
    attached = lit._trainer
    lit.trainer = SimpleNamespace(estimated_stepping_batches=total_steps)
    try:
        config = lit.configure_optimizers()
    finally:
        lit.trainer = attached
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for step in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        if step < total_steps - 1:
            optimizer.step()  # no gradients, nothing moves; keeps the scheduler's order check quiet
            scheduler.step()
    return lrs
