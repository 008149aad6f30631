"""The LightningModule: a network of model.py trained with cross-entropy, SGD-Nesterov or Adam and
OneCycleLR, and the callback that keeps its per-epoch history (metrics.csv)."""

import csv
import inspect
import io
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from model import build_model, class_probabilities
from plumbing.checkpointing import read_checkpoint
from plumbing.files import atomic_write_text
from recipes import DEFAULT

# Warnings at every fit that are not the user's to act on: Lightning 2.6 calls a torch API that
# newer torch deprecates; last.ckpt sits in the run folder beside the logs, so it is never empty.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")

OPTIMIZERS = ("sgd", "adam")
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def make_optimizer(params, name, lr, momentum, weight_decay):
    """SGD with Nesterov momentum (Page's recipe: it looks one step ahead before it corrects, which
    tolerates the high peak LR of a short OneCycle), or Adam (the course's choice: a per-weight step
    size, less sensitive to the LR, and usually a little less accurate at the end)."""
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def tta_logits(model, images, logits=None):
    """Test-time augmentation: the mean logits of the images and of their mirror images (the network
    was trained on both, so averaging the two views cancels some of each view's mistakes). `logits`:
    the plain ones, if known."""
    return ((model(images) if logits is None else logits) + model(images.flip(3))) / 2


class LitClassifier(pl.LightningModule):
    """`lr` is the OneCycle peak: linear from lr / div_factor up to lr over the first `pct_start` of
    the steps, then linear down to lr / div_factor / final_div_factor. `tta=True` also logs
    test_acc_tta (tta_logits) beside the plain test_acc. `channels_last` keeps the network and its
    batches in channels-last memory layout, what the convolutions of cuDNN and of oneDNN (CPU) run
    fastest on."""

    # Defaults: the default recipe's values (recipes.py is their one home).
    def __init__(
        self,
        model_name=DEFAULT["model"],
        num_classes=10,
        optimizer=DEFAULT["optimizer"],
        lr=DEFAULT["lr"],
        momentum=DEFAULT["momentum"],
        weight_decay=DEFAULT["weight_decay"],
        pct_start=DEFAULT["pct_start"],
        label_smoothing=DEFAULT["label_smoothing"],
        logit_scale=DEFAULT["logit_scale"],
        div_factor=DEFAULT["div_factor"],
        final_div_factor=DEFAULT["final_div_factor"],
        tta=DEFAULT["tta"],
        channels_last=False,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"
            )
        if not lr > 0:
            raise ValueError(f"the learning rate must be positive, got {lr}")
        self.save_hyperparameters()
        self.model = build_model(model_name, num_classes=num_classes, logit_scale=logit_scale)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._compiled = None  # the network compiled for the training steps (compile_training)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # average="micro" is plain accuracy (the default, "macro", averages per-class recalls);
        # validate_args=False skips a label check that costs a GPU -> CPU sync per step.
        accuracy = dict(num_classes=num_classes, average="micro", validate_args=False)
        self.train_acc, self.val_acc = (
            MulticlassAccuracy(**accuracy),
            MulticlassAccuracy(**accuracy),
        )
        self.test_acc, self.test_acc_tta = (
            MulticlassAccuracy(**accuracy),
            MulticlassAccuracy(**accuracy),
        )
        # Each epoch's mean loss over every image (also right under DDP with unequal shares, unlike
        # sync_dist).
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )

    def setup(self, stage):
        # Under DDP every process ran the LR range test on its own (train.py): all train with rank
        # 0's result.
        self.hparams.lr = self.trainer.strategy.broadcast(self.hparams.lr, src=0)

    @classmethod
    def from_settings(cls, settings, **overrides):
        """A LitClassifier from a recipe (recipes.RECIPES[name]) or any dict of run settings: the
        keys this class takes are used ("model" is the model name), the others (epochs, batch size,
        cutout...) are not its business."""
        settings = {**dict(settings), **overrides}
        settings.setdefault("model_name", settings.get("model", DEFAULT["model"]))
        names = inspect.signature(cls.__init__).parameters
        return cls(
            **{key: value for key, value in settings.items() if key in names and key != "self"}
        )

    def compile_training(self):
        """torch.compile the network for the training steps only, for their one batch shape
        (dynamic=False); evaluation stays eager. Kept out of the module's attributes, so checkpoints
        hold the weights once."""
        self.__dict__["_compiled"] = torch.compile(self.model, dynamic=False)

    def forward(self, x):
        return self.model(x)

    def _shared_step(self, batch, stage, accuracy, mean_loss, network=None):
        images, labels = batch
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = (self.model if network is None else network)(images)
        loss = self.criterion(logits, labels)
        accuracy(logits, labels)
        # the batch's mean once per image, so that a short last batch weighs less in the epoch's
        # mean
        mean_loss.update(loss.detach().expand(len(labels)))
        self.log(f"{stage}_loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss, logits

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train", self.train_acc, self.train_loss, self._compiled)[0]

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val", self.val_acc, self.val_loss)

    def test_step(self, batch, batch_idx):
        images, labels = batch
        _, logits = self._shared_step(batch, "test", self.test_acc, self.test_loss)
        if self.hparams.tta:
            if self.hparams.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.test_acc_tta(tta_logits(self.model, images, logits), labels)
            self.log("test_acc_tta", self.test_acc_tta, on_step=False, on_epoch=True)

    def predict_step(self, batch, batch_idx):
        """Softmax probabilities of a batch (trainer.predict runs it on the training device and
        precision)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return class_probabilities(self.model, images)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = make_optimizer(
            self.parameters(), hp.optimizer, hp.lr, hp.momentum, hp.weight_decay
        )
        # OneCycle (Smith): a short warm-up to a high peak LR, then down to ~0. High LRs travel fast
        # and act as a regulariser; the low ones at the end settle into a minimum. Stepped after
        # every batch ("interval": "step"), not every epoch, so the LR moves smoothly even in a
        # 5-epoch run.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=hp.lr,
            total_steps=self.trainer.estimated_stepping_batches,
            pct_start=hp.pct_start,
            anneal_strategy="linear",
            cycle_momentum=False,
            div_factor=hp.div_factor,
            final_div_factor=hp.final_div_factor,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class EpochMetricsCSV(pl.Callback):
    """The run's history, one row per epoch (METRIC_COLUMNS), in `rows` and in the CSV file at
    `path` (rewritten after every epoch). An epoch without validation leaves val_loss and val_acc
    empty."""

    def __init__(self, path):
        self.path = Path(path)
        self.rows = []
        self.last_lr = None
        self.validated_epoch = None

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated_epoch = trainer.current_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # the LR this batch trains with (by the epoch's end the scheduler has stepped past it)
        self.last_lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer, pl_module):
        # Lightning has run this epoch's validation by now; an epoch without one must not show an
        # older one's
        metrics = trainer.callback_metrics
        validated = self.validated_epoch == trainer.current_epoch
        row = {
            name: float(metrics[name])
            if name in metrics and (validated or name.startswith("train"))
            else ""
            for name in METRIC_COLUMNS[1:-1]
        }
        self.rows.append({"epoch": trainer.current_epoch + 1, **row, "lr": self.last_lr})
        if trainer.is_global_zero:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
            atomic_write_text(self.path, text.getvalue())

    def state_dict(self):  # kept in every checkpoint: a resumed run appends to the rows
        return {"rows": self.rows}

    def load_state_dict(self, state_dict):
        self.rows = list(state_dict["rows"])


def read_classifier_checkpoint(path):
    """The checkpoint dict at `path`, read once as plain tensors and containers (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train one with train.py (it writes RUN_DIR/last.ckpt)"
        )
    return read_checkpoint(path)


def classifier_from_checkpoint(checkpoint, path, map_location="cpu", expected_model=None):
    """The LitClassifier of a checkpoint dict read from `path` (named in the errors), in eval
    mode."""
    hparams, weights = checkpoint.get("hyper_parameters"), checkpoint.get("state_dict")
    if (
        not isinstance(hparams, dict)
        or "model_name" not in hparams
        or not isinstance(weights, dict)
    ):
        raise ValueError(
            f"{path} is not a checkpoint written by train.py (no LitClassifier hyper-parameters "
            "and weights in it)"
        )
    if expected_model is not None and hparams["model_name"] != expected_model:
        raise ValueError(
            f"{path} holds a {hparams['model_name']} model, not a {expected_model}: choose a "
            f"checkpoint "
            f"of a {expected_model} run, or load it as {hparams['model_name']}"
        )
    try:
        lit = LitClassifier(**hparams)
        lit.load_state_dict(weights)
    except (
        TypeError,
        RuntimeError,
        KeyError,
    ) as error:  # foreign hyper-parameters, weights of another shape
        first_line = str(error).strip().splitlines()[0][:300]
        raise ValueError(
            f"{path} does not fit a {hparams['model_name']} of this project "
            f"({type(error).__name__}: {first_line})"
        ) from None
    return lit.to(map_location).eval()


def load_classifier(path, map_location="cpu", expected_model=None):
    """A LitClassifier from a checkpoint written by train.py, in eval mode, or a ValueError saying
    what is wrong.

    `expected_model` (a name from model.MODELS) refuses a checkpoint of another architecture. The
    file is read once, as plain tensors and containers (weights_only), which is also what makes the
    checks possible. What serving the network needs besides (classes, mean/std...) is the
    checkpoint's serving record (see app.py)."""
    return classifier_from_checkpoint(
        read_classifier_checkpoint(path), Path(path), map_location, expected_model
    )
