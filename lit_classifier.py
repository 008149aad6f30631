"""The LightningModule: any model of model.py trained with cross-entropy, SGD-Nesterov or Adam and OneCycleLR."""
import inspect
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from model import build_model
from plumbing.checkpointing import read_checkpoint
from plumbing.files import UsageError
from recipes import DEFAULT

OPTIMIZERS = ("sgd", "adam")


def tta_logits(model, images, logits=None, translate=False):
    """Test-time augmentation: the mean logits of the images and their mirror images. `translate` (airbench's level 2):
    half of that, and half the mean of the same over the images shifted by one pixel up-left and down-right (reflect
    padding). `logits`: the model's plain logits of `images`, if already computed."""
    def mirrored(x, plain=None):
        return ((model(x) if plain is None else plain) + model(x.flip(3))) / 2

    result = mirrored(images, logits)
    if not translate:
        return result
    height, width = images.shape[2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = (padded[:, :, :height, :width], padded[:, :, 2:, 2:])
    return (result + (mirrored(shifted[0]) + mirrored(shifted[1])) / 2) / 2


class LitClassifier(pl.LightningModule):
    """`lr` is the OneCycle peak: linear from lr / div_factor up to lr over the first `pct_start` of the steps, then
    linear down to lr / div_factor / final_div_factor. `tta=True` also logs test_acc_tta, the accuracy of the mean
    logits of each test image and its mirror image (with `tta_translate`, tta_logits' level 2), beside the plain
    test_acc. `freeze_bn_weight` keeps the BatchNorm scales at 1; `bn_bias_lr` trains BN biases at that multiple of
    the LR and weight decay / bn_bias_lr (see recipes.py)."""

    # Defaults: the default recipe's values (recipes.py is their one home).
    def __init__(self, model_name=DEFAULT["model"], num_classes=10, optimizer=DEFAULT["optimizer"], lr=DEFAULT["lr"],
                 momentum=DEFAULT["momentum"], weight_decay=DEFAULT["weight_decay"], pct_start=DEFAULT["pct_start"],
                 label_smoothing=DEFAULT["label_smoothing"], logit_scale=DEFAULT["logit_scale"],
                 div_factor=DEFAULT["div_factor"], final_div_factor=DEFAULT["final_div_factor"], tta=DEFAULT["tta"],
                 tta_translate=DEFAULT["tta_translate"], freeze_bn_weight=DEFAULT["freeze_bn_weight"],
                 bn_bias_lr=DEFAULT["bn_bias_lr"]):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not lr > 0:
            raise UsageError(f"the learning rate must be positive, got {lr}")
        if not bn_bias_lr > 0:
            raise UsageError(f"--bn-bias-lr must be positive, got {bn_bias_lr}")
        self.save_hyperparameters()
        self.model = build_model(model_name, num_classes=num_classes, logit_scale=logit_scale)
        for norm in self._batch_norms():
            norm.weight.requires_grad_(not freeze_bn_weight)  # initialised at 1, so frozen at 1
        self.channels_last = False  # set by train.make_classifier: batches are made channels-last on the device
        self._compiled = None  # the network compiled for the training steps (compile_training)
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

    @classmethod
    def from_settings(cls, settings, **overrides):
        """A LitClassifier from a recipe (recipes.RECIPES[name]) or any dict of run settings: the keys this class
        takes are used ("model" is the model name), the others (epochs, batch size, cutout...) are not its business."""
        settings = {**dict(settings), **overrides}
        settings.setdefault("model_name", settings.get("model", DEFAULT["model"]))
        names = inspect.signature(cls.__init__).parameters
        return cls(**{key: value for key, value in settings.items() if key in names and key != "self"})

    def _batch_norms(self):
        return [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]

    def compile_training(self):
        """torch.compile the network for the training steps only, for one fixed batch shape (dynamic=False: the
        training batches all have one shape). Evaluation (other shapes, no gradients) stays eager, so it compiles
        nothing more. Kept out of the module's attributes (no second copy of the names in checkpoints)."""
        self.__dict__["_compiled"] = torch.compile(self.model, dynamic=False)

    def forward(self, x):
        return self.model(x)

    def _shared_step(self, batch, stage, accuracy, mean_loss, network=None):
        images, labels = batch
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)  # a no-op for DeviceBatches' batches
        logits = (self.model if network is None else network)(images)
        loss = self.criterion(logits, labels)
        accuracy(logits, labels)
        # One copy of the batch's mean per image, so that a short last batch weighs less (MeanMetric ignores its
        # weight argument when NaN checks are off). Under DDP both metrics gather every process's sums at the end.
        mean_loss.update(loss.detach().expand(len(labels)))
        self.log(f"{stage}_loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss, logits

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train", self.train_acc, self.train_loss, self._compiled)[0]

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val", self.val_acc, self.val_loss)

    def test_step(self, batch, batch_idx):
        _, logits = self._shared_step(batch, "test", self.test_acc, self.test_loss)
        if self.hparams.tta:
            images, labels = batch
            self.test_acc_tta(tta_logits(self.model, images, logits, self.hparams.tta_translate), labels)
            self.log("test_acc_tta", self.test_acc_tta, on_step=False, on_epoch=True)

    def predict_step(self, batch, batch_idx):
        """Softmax probabilities of a batch (trainer.predict runs it on the training device and precision)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(images).float(), dim=1)

    def configure_optimizers(self):
        hp = self.hparams
        trained = [p for p in self.parameters() if p.requires_grad]
        groups, peaks = [{"params": trained}], [hp.lr]
        if hp.bn_bias_lr != 1:
            biases = {id(norm.bias) for norm in self._batch_norms()}
            groups = [{"params": [p for p in trained if id(p) not in biases]},
                      {"params": [p for p in trained if id(p) in biases], "lr": hp.lr * hp.bn_bias_lr,
                       "weight_decay": hp.weight_decay / hp.bn_bias_lr}]
            peaks = [hp.lr, hp.lr * hp.bn_bias_lr]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True,
                                        weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.Adam(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks if len(peaks) > 1 else hp.lr, total_steps=self.trainer.estimated_stepping_batches,
            pct_start=hp.pct_start, anneal_strategy="linear", cycle_momentum=False, div_factor=hp.div_factor,
            final_div_factor=hp.final_div_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def read_classifier_checkpoint(path):
    """The checkpoint dict at `path`, read once as plain tensors and containers (weights_only), or a UsageError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}: train one with train.py (it writes RUN_DIR/last.ckpt)")
    return read_checkpoint(path)


def classifier_from_checkpoint(checkpoint, path, map_location="cpu", expected_model=None):
    """The LitClassifier of a checkpoint dict read from `path` (named in the errors), in eval mode."""
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


def load_classifier(path, map_location="cpu", expected_model=None):
    """A LitClassifier from a checkpoint written by train.py, in eval mode, or a UsageError saying what is wrong.

    `expected_model` (a name from model.MODELS) refuses a checkpoint of another architecture. The file is read
    once, as plain tensors and containers (weights_only), which is also what makes the checks possible. What serving
    the network needs besides (classes, mean/std...) is the checkpoint's "inference" record (see app.py)."""
    return classifier_from_checkpoint(read_classifier_checkpoint(path), Path(path), map_location, expected_model)
