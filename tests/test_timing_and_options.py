"""What train_seconds counts, the foreach EMA against one computed by hand (and across a resume), the dropped last
batch, and the off-by-default options: alternating flips, translate TTA, frozen BN scales with a larger BN-bias LR."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recipes
import train
from data import CIFAR10DataModule, Draw, ImageArrayDataset
from lit_classifier import LitClassifier, tta_logits
from plumbing import checkpointing
from plumbing.ema import EMA
from plumbing.files import UsageError
from plumbing.gpu_data import DeviceBatches, alternating_flip_base
from utils import train_transforms

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
             enable_checkpointing=False)


class Tiny(pl.LightningModule):
    """Linear + BatchNorm on 4 features; each step may advance a fake clock (see test_train_seconds_...)."""

    def __init__(self, clock=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.clock = clock
        self.seen = []  # the weights after every optimizer step, for the hand-made EMA

    def training_step(self, batch, batch_idx):
        if self.clock:
            self.clock.now += 1
        return self.net(batch[0]).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen.append({k: v.detach().clone() for k, v in self.state_dict().items()})

    def validation_step(self, batch, batch_idx):
        if self.clock:
            self.clock.now += 100

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loader():
    torch.manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(24, 4)), batch_size=4)  # 6 steps per epoch, fixed order


def test_train_seconds_count_training_steps_only(monkeypatch):
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(checkpointing.time, "perf_counter", lambda: clock.now)
    record = checkpointing.RunRecord({})
    trainer = pl.Trainer(max_epochs=3, callbacks=[record], num_sanity_val_steps=2, limit_val_batches=2, **QUIET)
    trainer.fit(Tiny(clock), loader(), loader())
    assert record.epoch_seconds == [6, 6, 6]  # 6 steps each; the validations inside the epochs are taken out
    assert record.eval_seconds == 100 * (2 + 3 * 2)  # the sanity check's 2 batches, then 2 per epoch
    assert record.train_seconds() == 18 and record.warmup_seconds() == 0


def test_warmup_is_what_each_sessions_first_epoch_took_beyond_the_typical_one():
    record = checkpointing.RunRecord({})
    record.epoch_seconds, record.session_starts = [9.0, 2.0, 2.5, 2.0, 4.0, 2.0], [0, 4]
    assert record.warmup_seconds() == pytest.approx((9 - 2) + (4 - 2))
    record.epoch_seconds, record.session_starts = [9.0], [0]
    assert record.warmup_seconds() is None  # nothing to compare with
    restored = checkpointing.RunRecord({})
    restored.load_state_dict({"train_seconds": 12.5, "resumed_after_epochs": []})  # an older train.py's checkpoint
    assert restored.train_seconds() == 12.5


def hand_ema(seen, decay, every):
    """The EMA of the recorded weights: the first update copies, the later ones move by 1 - decay ** every."""
    average = None
    for step, weights in enumerate(seen, start=1):
        if step % every:
            continue
        if average is None:
            average = {k: v.clone() for k, v in weights.items()}
        else:
            average = {k: (a + (1 - decay ** every) * (weights[k] - a) if a.is_floating_point() else weights[k])
                       for k, a in average.items()}
    return average


@pytest.mark.parametrize("every", [1, 3])
def test_ema_equals_the_average_computed_by_hand(every):
    module = Tiny()
    trainer = pl.Trainer(max_epochs=2, callbacks=[EMA(0.7, every=every)], limit_val_batches=0, **QUIET)
    trainer.fit(module, loader())
    expected = hand_ema(module.seen, 0.7, every)
    for name, value in module.state_dict().items():  # after training the module holds the average
        assert torch.allclose(value.float(), expected[name].float(), atol=1e-6), name


def test_ema_validates_on_the_average_and_resumes_exactly(tmp_path):
    def fit(epochs, ckpt_path=None, folder=None):
        callbacks = [EMA(0.6, every=2)]
        if folder:
            callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=folder, filename="last",
                                                          save_on_train_epoch_end=True))
        torch.manual_seed(1)
        module = Tiny()
        trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, limit_val_batches=0, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                             enable_checkpointing=folder is not None)
        trainer.fit(module, loader(), ckpt_path=ckpt_path)
        return module

    straight = fit(3)
    fit(1, folder=tmp_path)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == set(checkpoint["current_model_state"])  # the average, and the weights
    assert not torch.equal(checkpoint["state_dict"]["net.0.weight"], checkpoint["current_model_state"]["net.0.weight"])
    resumed = fit(3, ckpt_path=tmp_path / "last.ckpt")
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_training_drops_the_last_partial_batch_on_both_paths_and_evaluation_keeps_it():
    for path in ("loader", "device"):
        dm = CIFAR10DataModule(synthetic=True, train_size=100, test_size=30, batch_size=32, num_workers=0,
                               data_path=path)
        dm.setup()
        batches = list(dm.train_dataloader())
        assert len(dm.train_dataloader()) == 3 and [len(b[1]) for b in batches] == [32, 32, 32], path
        assert sum(len(b[1]) for b in dm.test_dataloader()) == 30, path


def test_a_batch_larger_than_the_training_set_is_a_clear_error():
    dm = CIFAR10DataModule(synthetic=True, train_size=20, test_size=10, batch_size=32, num_workers=0)
    dm.setup()
    with pytest.raises(UsageError, match=r"--batch-size 32 is larger than the training set \(20 images\)"):
        dm.train_dataloader()


def test_onecycle_counts_the_full_batches_only():
    lit = LitClassifier(lr=0.1)
    dm = CIFAR10DataModule(synthetic=True, train_size=100, test_size=20, batch_size=32, num_workers=0)
    trainer = pl.Trainer(max_epochs=2, limit_val_batches=0, **QUIET)
    trainer.fit(lit, datamodule=dm)
    assert trainer.global_step == 6 and trainer.lr_scheduler_configs[0].scheduler.total_steps == 6


# ------------------------------------------------------------------------------------------- alternating flips
def flipped_per_epoch(path, epochs=4, n=40, seed=3):
    """(epochs, n) booleans: whether image i was served mirrored in each epoch (no crop, no cutout)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    if path == "device":
        batches = DeviceBatches(images, np.arange(n), mean, std, batch_size=n, train=True, cutout=0, pad=0,
                                seed=seed, alt_flip=True)
        served = [next(iter(batches)) for _ in range(epochs)]
    else:
        dataset = ImageArrayDataset(images, np.arange(n), train_transforms(mean, std, cutout=0, pad=0, flip=False),
                                    flip_base=alternating_flip_base(n, seed))
        served = []
        for epoch in range(epochs):
            draws = [Draw(i, seed, epoch) for i in range(n)]
            served.append((torch.stack([x for x, _ in dataset.__getitems__(draws)]), torch.arange(n)))
    plain = (torch.as_tensor(images).permute(0, 3, 1, 2).float() - 127.5) / 63.75
    result = np.zeros((epochs, n), bool)
    for epoch, (batch, labels) in enumerate(served):
        for x, i in zip(batch, labels.tolist()):
            assert torch.allclose(x, plain[i], atol=1e-4) or torch.allclose(x, plain[i].flip(2), atol=1e-4)
            result[epoch, i] = torch.allclose(x, plain[i].flip(2), atol=1e-4)
    return result


@pytest.mark.parametrize("path", ["loader", "device"])
def test_alternating_flips_mirror_each_image_in_exactly_one_of_two_consecutive_epochs(path):
    flipped = flipped_per_epoch(path)
    assert (flipped[1:] != flipped[:-1]).all()
    assert 0.2 < flipped[0].mean() < 0.8  # a random half, not all or none


def test_both_paths_flip_the_same_images():
    assert (flipped_per_epoch("loader") == flipped_per_epoch("device")).all()


# ------------------------------------------------------------------------------------------------------ TTA
def test_translate_tta_averages_mirror_tta_of_the_image_and_of_two_one_pixel_shifts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    images = torch.randn(2, 3, 8, 8)

    def mirror(x):
        return (model(x) + model(x.flip(3))) / 2

    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    down_right = torch.as_tensor(padded[:, :, :8, :8])   # pixel (y, x) shows (y - 1, x - 1), mirrored at the border
    up_left = torch.as_tensor(padded[:, :, 2:, 2:])
    assert torch.equal(down_right[:, :, 1:, 1:], images[:, :, :-1, :-1])
    expected = mirror(images) / 2 + (mirror(down_right) + mirror(up_left)) / 4
    with torch.no_grad():
        assert torch.allclose(tta_logits(model, images, translate=True), expected, atol=1e-6)
        assert torch.allclose(tta_logits(model, images), mirror(images), atol=1e-6)


# ------------------------------------------------------------------------------------------- BatchNorm options
def test_frozen_bn_scales_stay_at_one_and_bn_biases_get_the_larger_lr_and_smaller_decay():
    lit = LitClassifier(lr=0.4, weight_decay=5e-4, freeze_bn_weight=True, bn_bias_lr=64)
    lit.trainer = SimpleNamespace(estimated_stepping_batches=10)
    config = lit.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    others, biases = optimizer.param_groups
    norms = [m for m in lit.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in norms}
    assert not any(id(m.weight) in {id(p) for p in others["params"]} for m in norms)
    assert biases["max_lr"] == pytest.approx(64 * others["max_lr"]) and others["max_lr"] == 0.4
    assert biases["weight_decay"] * biases["max_lr"] == pytest.approx(others["weight_decay"] * others["max_lr"])
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(lit(images), labels).backward()
    optimizer.step()
    scheduler.step()
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert lit.hparams.freeze_bn_weight and LitClassifier().hparams.bn_bias_lr == 1.0


def test_every_recipe_has_the_new_options_off():
    for name, recipe in recipes.RECIPES.items():
        assert (recipe["alt_flip"], recipe["tta_translate"], recipe["freeze_bn_weight"], recipe["bn_bias_lr"],
                recipe["ema_every"]) == (False, False, False, 1.0, 1), name


# ------------------------------------------------------------------------------------------------ a timed run
def test_timed_run_validates_and_checkpoints_after_the_last_epoch_only(tmp_path):
    out = tmp_path / "timed"
    argv = ["--synthetic", "--train-size", "60", "--test-size", "30", "--epochs", "2", "--batch-size", "20",
            "--lr", "0.1", "--no-val-every-epoch", "--no-ckpt-every-epoch", "--alt-flip", "--tta-translate",
            "--freeze-bn-weight", "--bn-bias-lr", "64", "--ema", "0.8", "--ema-every", "2", "--out", str(out),
            "--enable-progress-bar", "false", "--num-workers", "0"]
    args, trainer_kwargs = train.parse_args(argv)
    trainer = train.make_trainer(recipes.resolve(args), trainer_kwargs, out, train.EpochMetricsCSV(out / "m.csv"),
                                 checkpointing.RunRecord({}))
    assert trainer.check_val_every_n_epoch == 2 and trainer.checkpoint_callback._every_n_epochs == 2
    assert train.main(argv) == 0
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[3:5] for row in rows][0] == ["", ""]  # epoch 1: trained, not validated
    summary = json.loads((out / "summary.json").read_text())
    assert float(rows[1].split(",")[4]) == pytest.approx(summary["test_acc"], abs=1e-6)
    assert summary["tta"] == "mirror+translate" and len(summary["train_epoch_seconds"]) == 2
    assert summary["wall_seconds"] > summary["train_seconds"] + summary["eval_seconds"]
    assert summary["train_seconds"] == pytest.approx(sum(summary["train_epoch_seconds"]), abs=0.01)
    assert (out / "last.ckpt").is_file() and (out / "curves.png").is_file()
