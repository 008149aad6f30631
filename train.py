"""Train a CIFAR-10 ResNet with PyTorch Lightning and keep everything about the run in one folder.

    python train.py --epochs 24 --data-dir data --out runs/resnet9

The same steps as notebook 4, from a terminal: the data (a LightningDataModule), the network and its
training recipe (a LightningModule), loggers and callbacks, the Trainer, fit, test, and the report.
Hyperparameters come from a recipe (recipes.py; any flag overrides one value); every Lightning
Trainer argument passes through (--accelerator, --devices, --strategy ddp, --precision, ...);
`--resume RUN_DIR` continues a run that was cut off. The run folder gets last.ckpt, metrics.csv,
summary.json, the figures and the logs (report.py)."""

import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

import recipes
import report
from data import CIFAR10DataModule
from lit_classifier import OPTIMIZERS, EpochMetricsCSV, LitClassifier
from lr_finder import find_lr
from model import MODELS, build_model
from plumbing import checkpointing, cli
from plumbing.files import atomic_savefig


def train(settings, trainer_flags, callbacks=()):
    """Train and test one run and write its folder. Returns the summary (None in the DDP processes
    other than rank 0, which alone writes the report). `callbacks`: more Lightning callbacks
    (tools/bench.py's clock)."""
    wall_start = time.perf_counter()
    out = cli.prepare_run_folder(settings, report.RUN_OUTPUTS)
    pl.seed_everything(settings["seed"], workers=True)

    # The data: CIFAR-10 (downloaded on first use), normalised by its channel mean/std, augmented
    # for training.
    datamodule = CIFAR10DataModule(
        settings["data_dir"],
        settings["batch_size"],
        synthetic=settings["synthetic"],
        train_size=settings["train_size"],
        test_size=settings["test_size"],
        seed=settings["seed"],
        cutout=settings["cutout"],
        num_workers=settings["num_workers"],
        augment_on=settings["augment_on"],
    )
    datamodule.prepare_data()
    datamodule.setup("fit")

    # The OneCycle peak: the recipe's, or a tenth of where the LR range test's loss was lowest
    # (notebook 2).
    if settings["lr_find"] and not settings["resume"]:
        probe = build_model(settings["model"], logit_scale=settings["logit_scale"])
        settings["lr"], figure = find_lr(
            probe,
            datamodule.train_dataloader(),
            settings["optimizer"],
            settings["weight_decay"],
            settings["momentum"],
            precision=trainer_flags.get("precision", "32-true"),
            channels_last=settings["channels_last"],
        )
        atomic_savefig(figure, out / "lr_finder.png")
        print(f"LR range test suggests a OneCycle peak of {settings['lr']:.3g}")

    lit = LitClassifier.from_settings(settings)
    if settings["compile"]:
        lit.compile_training()

    # Loggers and callbacks. RunRecord comes first, so its clock stops before the others' epoch-end
    # work; last.ckpt is written after every epoch (or only the last), in place, and atomically.
    run_record = checkpointing.RunRecord({**settings, "trainer": trainer_flags})
    every = 1 if settings["ckpt_every_epoch"] else settings["epochs"]
    callbacks = [
        run_record,
        ModelSummary(max_depth=2),
        ModelCheckpoint(
            dirpath=out,
            filename="last",
            enable_version_counter=False,
            every_n_epochs=every,
            save_on_train_epoch_end=True,
        ),
        LearningRateMonitor(logging_interval="step"),
        checkpointing.StopOnNonFinite(out),
        EpochMetricsCSV(out / "metrics.csv"),
        checkpointing.SeedEachEpoch(settings["seed"]),
        checkpointing.ServingRecord(report.serving_record(settings, datamodule, lit), run_record),
        *callbacks,
    ]
    loggers = [CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tensorboard")]

    with cli.lightning_checks(trainer_flags):
        trainer = pl.Trainer(
            max_epochs=settings["epochs"],
            logger=loggers,
            callbacks=callbacks,
            default_root_dir=out,
            plugins=[checkpointing.AtomicCheckpointIO()],
            **trainer_flags,
        )
    cli.check_processes(trainer, settings, trainer_flags)
    resume_from = out / checkpointing.CHECKPOINT if settings["resume"] else None
    trainer.fit(lit, datamodule=datamodule, ckpt_path=resume_from)
    # the final weights, never a "best"
    test = trainer.test(lit, datamodule=datamodule, verbose=False)[0]
    if not trainer.is_global_zero:
        return None
    return report.write(settings, trainer, lit, datamodule, test, wall_start)


def main(argv=None):
    try:
        settings, trainer_flags = cli.parse(
            argv, __doc__.split("\n\n")[0], recipes.RECIPES, MODELS, OPTIMIZERS, recipes.resolve
        )
        summary = train(settings, trainer_flags)
    except cli.USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary:
        print(
            f"test accuracy {summary['test_acc']:.2%} after {summary['epochs']} epochs, "
            f"{summary['train_seconds']:.1f} s ({summary['images_per_second']:.0f} images/s) on "
            f"{summary['device']}; run folder {settings['out']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
