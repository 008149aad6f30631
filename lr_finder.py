"""LR range test (Leslie Smith) with torch-lr-finder: the suggested LR becomes the OneCycle peak."""
import copy
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # no display needed; notebooks still show the returned figure inline
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch_lr_finder import LRFinder


def find_lr(model, train_loader, optimizer="sgd", weight_decay=5e-4, momentum=0.9, start_lr=1e-5, end_lr=10.0,
            num_iter=100, device=None):
    """Run the range test on a copy of `model` (the model itself is left untouched).

    Returns (suggested_lr, figure): the LR at the steepest descent of the smoothed loss, and loss-vs-LR with it marked.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = copy.deepcopy(model)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=start_lr, momentum=momentum, nesterov=True,
                              weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=start_lr, weight_decay=weight_decay)
    finder = LRFinder(model, opt, nn.CrossEntropyLoss(), device=device)
    finder.range_test(train_loader, end_lr=end_lr, num_iter=num_iter, step_mode="exp")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax, suggested_lr = finder.plot(ax=ax, suggest_lr=True)
    ax.set_title(f"LR range test: suggested peak {suggested_lr:.2e}" if suggested_lr else "LR range test")
    return suggested_lr, fig


def onecycle_schedule(lit, total_steps):
    """The learning rate of each of `total_steps` optimizer steps under `lit.configure_optimizers()`, without training.

    configure_optimizers only reads `trainer.estimated_stepping_batches`, so a stand-in trainer supplies that number
    and the plotted schedule is exactly the one a run would use.
    """
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
            optimizer.step()  # no gradients, so no parameter moves; keeps the scheduler's call-order check quiet
            scheduler.step()
    return lrs
