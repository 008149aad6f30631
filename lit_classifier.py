"""The LightningModule: any model of model.py trained with cross-entropy, SGD-Nesterov or Adam and OneCycleLR."""
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from model import build_model
from plumbing.checkpointing import read_checkpoint
from plumbing.files import UsageError
from recipes import DEFAULT

OPTIMIZERS = ("sgd", "adam")


class LitClassifier(pl.LightningModule):
    """`lr` is the OneCycle peak: linear from lr / div_factor up to lr over the first `pct_start` of the steps, then
    linear down to lr / div_factor / final_div_factor. `tta=True` also logs test_acc_tta, the accuracy of the mean
    logits of each test image and its mirror image, beside the plain test_acc."""

    # Defaults: the default recipe's values (recipes.py is their one home).
    def __init__(self, model_name=DEFAULT["model"], num_classes=10, optimizer=DEFAULT["optimizer"], lr=DEFAULT["lr"],
                 momentum=DEFAULT["momentum"], weight_decay=DEFAULT["weight_decay"], pct_start=DEFAULT["pct_start"],
                 label_smoothing=DEFAULT["label_smoothing"], logit_scale=DEFAULT["logit_scale"],
                 div_factor=DEFAULT["div_factor"], final_div_factor=DEFAULT["final_div_factor"], tta=DEFAULT["tta"]):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not lr > 0:
            raise UsageError(f"the learning rate must be positive, got {lr}")
        self.save_hyperparameters()
        self.model = build_model(model_name, num_classes=num_classes, logit_scale=logit_scale)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # average="micro" is plain accuracy; MulticlassAccuracy's default ("macro") averages per-class recalls.
        # validate_args=False: its check runs torch.unique on the labels, a GPU -> CPU sync at every step (the data
        # reader already rejects labels outside 0..9).
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc_tta = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        # Each epoch's mean loss. A torchmetrics metric rather than self.log(loss, sync_dist=True), whose mean over
        # DDP processes divides their summed image count by their number in integers (wrong for unequal shares);
        # nan_strategy="disable" spares a GPU -> CPU sync at every step.
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(3))

    def setup(self, stage):
        # Under DDP every process ran the LR range test on its own (train.py): all train with rank 0's result.
        self.hparams.lr = self.trainer.strategy.broadcast(self.hparams.lr, src=0)

    def forward(self, x):
        return self.model(x)

    def _shared_step(self, batch, stage, accuracy, mean_loss):
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        accuracy(logits, labels)
        # One copy of the batch's mean per image, so that a short last batch weighs less (MeanMetric ignores its
        # weight argument when NaN checks are off). Under DDP both metrics gather every process's sums at the end.
        mean_loss.update(loss.detach().expand(len(labels)))
        self.log(f"{stage}_loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss, logits

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train", self.train_acc, self.train_loss)[0]

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val", self.val_acc, self.val_loss)

    def test_step(self, batch, batch_idx):
        _, logits = self._shared_step(batch, "test", self.test_acc, self.test_loss)
        if self.hparams.tta:
            images, labels = batch
            self.test_acc_tta((logits + self(images.flip(3))) / 2, labels)
            self.log("test_acc_tta", self.test_acc_tta, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, nesterov=True,
                                        weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp.lr, total_steps=self.trainer.estimated_stepping_batches, pct_start=hp.pct_start,
            anneal_strategy="linear", cycle_momentum=False, div_factor=hp.div_factor,
            final_div_factor=hp.final_div_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_classifier(path, map_location="cpu", expected_model=None):
    """A LitClassifier from a checkpoint written by train.py, in eval mode, or a UsageError saying what is wrong.

    `expected_model` (a name from model.MODELS) refuses a checkpoint of another architecture. The file is read
    once, as plain tensors and containers (weights_only), which is also what makes the checks below possible."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}: train one with train.py (it writes RUN_DIR/last.ckpt)")
    checkpoint = read_checkpoint(path)
    hparams, weights = checkpoint.get("hyper_parameters"), checkpoint.get("state_dict")
    if not isinstance(hparams, dict) or "model_name" not in hparams or not isinstance(weights, dict):
        raise UsageError(f"{path} is not a checkpoint written by train.py (no LitClassifier hyper-parameters "
                         "and weights in it)")
    if expected_model is not None and hparams["model_name"] != expected_model:
        raise UsageError(f"{path} holds a {hparams['model_name']} model, not a {expected_model}: choose a checkpoint "
                         f"of a {expected_model} run, or load it as {hparams['model_name']}")
    try:
        lit = LitClassifier(**hparams)
        lit.load_state_dict(weights)
    except (TypeError, RuntimeError, KeyError) as error:  # foreign hyper-parameters, weights of another shape
        first_line = str(error).strip().splitlines()[0][:300]
        raise UsageError(f"{path} does not fit a {hparams['model_name']} of this project "
                         f"({type(error).__name__}: {first_line})") from None
    return lit.to(map_location).eval()
