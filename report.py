"""What a run leaves in its folder once trained and tested: summary.json (settings, accuracy,
timings), the figures (curves, the most confident mistakes, the confusion matrix, GradCAM of the
mistakes), the serving record in last.ckpt, and a time-to-accuracy record for the README's table
when asked. train.py calls `write` at its end."""

import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

import gradcam
import recipes
import utils
from lit_classifier import EpochMetricsCSV
from model import count_parameters
from plumbing import checkpointing, records
from plumbing.files import atomic_savefig, atomic_write_json, describe_device

# What train.py writes into a run folder; the first three mean that the folder holds a run.
RUN_OUTPUTS = (
    "last.ckpt",
    "summary.json",
    "metrics.csv",
    "curves.png",
    "misclassified.png",
    "gradcam.png",
    "confusion.png",
    "lr_finder.png",
    "logs",
    "tensorboard",
)


def serving_record(settings, datamodule, lit):
    """What the app needs to use the network without the run folder (kept in every checkpoint)."""
    return {
        "model_name": settings["model"],
        "num_classes": lit.hparams.num_classes,
        "logit_scale": settings["logit_scale"],
        "params": count_parameters(lit.model),
        "classes": tuple(datamodule.classes),
        "mean": tuple(map(float, datamodule.mean)),
        "std": tuple(map(float, datamodule.std)),
        "data": records.data_set_name(datamodule.source),
        "train_images": len(datamodule.train_set),
        "recipe": settings["recipe"],
        "hyperparameters": {key: settings[key] for key in recipes.SETTINGS},
    }


def write(settings, trainer, lit, datamodule, test, wall_start):
    """Writes the run folder's report; returns the summary (what summary.json holds)."""
    out = Path(settings["out"])
    history = next(c for c in trainer.callbacks if isinstance(c, EpochMetricsCSV))
    run_record = next(c for c in trainer.callbacks if isinstance(c, checkpointing.RunRecord))
    test_results = {
        "test_acc": round(float(test["test_acc"]), 6),
        "test_images": len(datamodule.test_set),
    }
    if settings["tta"]:
        test_results["test_acc_tta"] = round(float(test["test_acc_tta"]), 6)
    # last.ckpt serves alone
    checkpointing.record_test_results(out / checkpointing.CHECKPOINT, test_results)

    train_seconds, warmup = run_record.train_seconds(), run_record.warmup_seconds()
    train_images = len(datamodule.train_set)
    batch = settings["batch_size"]
    # the partial batch is dropped
    trained_images = train_images // batch * batch * settings["epochs"]
    summary = {
        "recipe": settings["recipe"],
        "model": settings["model"],
        "params": count_parameters(lit.model),
        "epochs": settings["epochs"],
        "batch_size": batch,
        "devices": trainer.world_size,
        "train_images": train_images,
        **test_results,
        "test_loss": round(float(test["test_loss"]), 6),
        "tta": "mirror" if settings["tta"] else None,
        "train_seconds": round(train_seconds, 3),
        "warmup_seconds": None if warmup is None else round(warmup, 3),
        "eval_seconds": round(run_record.eval_seconds, 3),
        "wall_seconds": None,  # the whole run, figures included: set once they are written
        "train_epoch_seconds": [round(seconds, 3) for seconds in run_record.epoch_seconds],
        # test accuracy after each epoch (the validation split is the test split)
        "epoch_test_acc": [
            None if row["val_acc"] == "" else round(row["val_acc"], 6) for row in history.rows
        ],
        "images_per_second": round(trained_images / train_seconds, 1),
        "device": describe_device(trainer.strategy.root_device),
        "augment_on": settings["augment_on"],
        "precision": str(trainer.precision),
        "channels_last": settings["channels_last"],
        "seed": settings["seed"],
        "data": datamodule.source,
        "resumed_after_epochs": run_record.resumed_after_epochs,
        "settings": run_record.settings,
        "versions": {"torch": torch.__version__, "pytorch_lightning": pl.__version__},
    }
    for name, figure in figures(lit, datamodule, history.rows, trainer).items():
        atomic_savefig(figure, out / name)
    summary["wall_seconds"] = round(time.perf_counter() - wall_start, 3)
    # how busy the machine was (1, 5, 15 min): a timed run shares it with nothing heavy
    summary["load_before"] = [round(load, 2) for load in run_record.load_before or ()]
    summary["load_after"] = [round(load, 2) for load in os.getloadavg()]
    atomic_write_json(out / "summary.json", summary)
    if settings["results_dir"]:
        records.write_record(settings["results_dir"], records.record_from_summary(summary))
    return summary


def figures(lit, datamodule, rows, trainer):
    """{file name: figure}: the curves, and what the network gets wrong on the whole test split,
    predicted on the training device in the training precision, as the test ran (the module goes
    back where it was)."""
    shown = {"curves.png": utils.plot_curves(rows)}
    home = next(lit.parameters()).device
    lit.to(trainer.strategy.root_device)  # Lightning's teardown put it back on the CPU
    try:
        with trainer.precision_plugin.forward_context():
            probs, labels = utils.predict(lit.model, datamodule.predict_dataloader())
        images, classes = datamodule.test_images, datamodule.classes
        mistakes = utils.misclassified(probs, labels)
        shown["misclassified.png"] = utils.plot_misclassified(images, labels, mistakes, classes)
        shown["confusion.png"] = utils.plot_confusion(
            utils.confusion_matrix(probs, labels), classes
        )
        # 8 mistakes, for the predicted and true class
        layer = gradcam.DEFAULT_LAYERS[lit.hparams.model_name]
        overlays = gradcam.mistake_overlays(
            lit.model, images, labels, mistakes, datamodule.mean, datamodule.std, layer, n=8
        )
        shown["gradcam.png"] = utils.plot_gradcam(
            images, labels, mistakes, overlays, classes, layer
        )
    finally:
        lit.to(home)
    return shown
