"""What train_seconds counts, the dropped last batch, OneCycle's step count, and what each option
does to a run: label smoothing, logit scale, cutout, flip TTA, channels-last, where augmentation
runs, validating and checkpointing only after the last epoch (a timed run)."""

from types import SimpleNamespace

import albumentations as A
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import train
from data import CIFAR10DataModule
from lit_classifier import LitClassifier
from plumbing import checkpointing, hardware
from tests.conftest import parse_train_args

QUIET = dict(
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    accelerator="cpu",
    enable_checkpointing=False,
)


class Tiny(pl.LightningModule):
    """Linear + BatchNorm on 4 features; each step may advance a fake clock (see
    test_train_seconds_...)."""

    def __init__(self, clock=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.clock = clock

    def training_step(self, batch, batch_idx):
        if self.clock:
            self.clock.now += 1
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        if self.clock:
            self.clock.now += 100

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loader():
    torch.manual_seed(0)
    # 6 steps per epoch, fixed order
    return DataLoader(TensorDataset(torch.randn(24, 4)), batch_size=4)


def test_train_seconds_count_training_steps_only(monkeypatch):
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(checkpointing.time, "perf_counter", lambda: clock.now)
    record = checkpointing.RunRecord({})
    trainer = pl.Trainer(
        max_epochs=3, callbacks=[record], num_sanity_val_steps=2, limit_val_batches=2, **QUIET
    )
    trainer.fit(Tiny(clock), loader(), loader())
    # 6 steps each; the validations inside the epochs are taken out
    assert record.epoch_seconds == [6, 6, 6]
    # the sanity check's 2 batches, then 2 per epoch
    assert record.eval_seconds == 100 * (2 + 3 * 2)
    assert record.train_seconds() == 18 and record.warmup_seconds() == 0


def test_warmup_is_what_each_sessions_first_epoch_took_beyond_the_typical_one():
    record = checkpointing.RunRecord({})
    record.epoch_seconds, record.session_starts = [9.0, 2.0, 2.5, 2.0, 4.0, 2.0], [0, 4]
    assert record.warmup_seconds() == pytest.approx((9 - 2) + (4 - 2))
    record.epoch_seconds, record.session_starts = [9.0], [0]
    assert record.warmup_seconds() is None  # nothing to compare with


def test_training_drops_the_last_partial_batch_on_both_paths_and_evaluation_keeps_it():
    for path in ("loader", "device"):
        dm = CIFAR10DataModule(
            synthetic=True,
            train_size=100,
            test_size=30,
            batch_size=32,
            num_workers=0,
            augment_on=path,
        )
        dm.setup()
        batches = list(dm.train_dataloader())
        assert len(dm.train_dataloader()) == 3 and [len(b[1]) for b in batches] == [32, 32, 32], (
            path
        )
        assert sum(len(b[1]) for b in dm.test_dataloader()) == 30, path


def test_a_batch_larger_than_the_training_set_is_a_clear_error():
    dm = CIFAR10DataModule(
        synthetic=True, train_size=20, test_size=10, batch_size=32, num_workers=0
    )
    dm.setup()
    with pytest.raises(
        ValueError, match=r"--batch-size 32 is larger than the training set \(20 images\)"
    ):
        dm.train_dataloader()


def test_onecycle_counts_the_full_batches_only():
    lit = LitClassifier(lr=0.1)
    dm = CIFAR10DataModule(
        synthetic=True, train_size=100, test_size=20, batch_size=32, num_workers=0
    )
    trainer = pl.Trainer(max_epochs=2, limit_val_batches=0, **QUIET)
    trainer.fit(lit, datamodule=dm)
    assert trainer.global_step == 6 and trainer.lr_scheduler_configs[0].scheduler.total_steps == 6


# ------------------------------------------------------------------------------------ the options
class Probe(pl.Callback):
    """What a run trained with: its Trainer, LitClassifier and DataModule, the memory layout of the
    batches the network saw, and how many checkpoints it wrote."""

    def __init__(self):
        self.checkpoints, self.channels_last_inputs = 0, set()

    def on_fit_start(self, trainer, pl_module):
        self.trainer, self.lit, self.datamodule = trainer, pl_module, trainer.datamodule
        pl_module.model.register_forward_pre_hook(self.look)

    def look(self, module, inputs):
        if module.training:
            layout = inputs[0].is_contiguous(memory_format=torch.channels_last)
            self.channels_last_inputs.add(layout)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.checkpoints += 1


def checkpoint(run_dir):
    return torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def options_run(tmp_path_factory):
    """A timed run (validation and last.ckpt after the last epoch only) with every other option
    off its default."""
    out = tmp_path_factory.mktemp("options")
    settings, trainer_flags = parse_train_args(
        [
            "--synthetic",
            "--train-size",
            "60",
            "--test-size",
            "30",
            "--epochs",
            "2",
            "--batch-size",
            "20",
            "--lr",
            "0.1",
            "--label-smoothing",
            "0.2",
            "--logit-scale",
            "0.5",
            "--cutout",
            "4",
            "--no-tta",
            "--channels-last",
            "--augment-on",
            "loader",
            "--no-val-every-epoch",
            "--no-ckpt-every-epoch",
            "--out",
            str(out),
            "--enable-progress-bar",
            "false",
            "--num-workers",
            "0",
        ]
    )
    probe = Probe()
    summary = train.train(settings, trainer_flags, callbacks=[probe])
    return out, summary, probe


def test_each_option_reaches_the_network_and_the_data(options_run):
    out, summary, probe = options_run
    lit, datamodule = probe.lit, probe.datamodule
    assert lit.criterion.label_smoothing == 0.2 and lit.model.logit_scale == 0.5
    holes = [t for t in datamodule.train_set.transform.transforms if isinstance(t, A.CoarseDropout)]
    assert [(t.hole_height_range, t.hole_width_range) for t in holes] == [((4, 4), (4, 4))]
    assert datamodule.hparams.augment_on == "loader" and summary["augment_on"] == "loader"
    # channels-last: the weights are stored so, and every training batch reached the network so
    assert probe.channels_last_inputs == {True}
    assert all(
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in lit.model.modules()
        if isinstance(m, nn.Conv2d)
    )
    assert summary["channels_last"] is True
    hparams = checkpoint(out)["hyper_parameters"]
    assert [hparams[key] for key in ("label_smoothing", "logit_scale", "tta", "channels_last")] == [
        0.2,
        0.5,
        False,
        True,
    ]


def test_channels_last_defaults_to_the_machines_fastest_and_can_be_set_either_way():
    quick = ["--synthetic", "--out", "unused", "--accelerator", "cpu"]
    default = hardware.fast_channels_last(cuda=False)
    assert parse_train_args(quick)[0]["channels_last"] is default
    assert parse_train_args(quick + ["--channels-last"])[0]["channels_last"] is True
    assert parse_train_args(quick + ["--no-channels-last"])[0]["channels_last"] is False


def test_without_tta_only_the_single_view_accuracy_is_reported(options_run):
    out, summary, probe = options_run
    assert summary["tta"] is None and "test_acc_tta" not in summary
    metrics = probe.trainer.callback_metrics
    assert "test_acc_tta" not in metrics and "test_acc" in metrics
    serving = checkpoint(out)[checkpointing.SERVING]
    assert "test_acc_tta" not in serving and serving["test_acc"] == summary["test_acc"]


def test_timed_run_validates_and_checkpoints_after_the_last_epoch_only(options_run):
    out, summary, probe = options_run
    assert probe.trainer.check_val_every_n_epoch == 2 and probe.checkpoints == 1
    assert checkpoint(out)["epoch"] == 1  # the last epoch's
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[3:5] for row in rows][0] == ["", ""]  # epoch 1: trained, not validated
    assert float(rows[1].split(",")[4]) == pytest.approx(summary["test_acc"], abs=1e-6)
    assert len(summary["train_epoch_seconds"]) == 2
    assert summary["wall_seconds"] > summary["train_seconds"] + summary["eval_seconds"]
    assert summary["train_seconds"] == pytest.approx(sum(summary["train_epoch_seconds"]), abs=0.01)
    assert (out / "last.ckpt").is_file() and (out / "curves.png").is_file()
