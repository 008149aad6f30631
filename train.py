"""Train a CIFAR-10 ResNet with PyTorch Lightning and write everything about the run into one folder.

    python train.py --model custom_resnet --epochs 24 --batch-size 512 --data-dir data --out runs/resnet9

The hyperparameters come from a recipe (recipes.py: dawn, the default for the ResNet-9; course; resnet18); any
recipe flag given explicitly overrides that one value.

Any Lightning Trainer argument passes through (--accelerator, --devices, --strategy, --precision, ...). With
--devices N --strategy ddp, Lightning runs this script once per device and --batch-size stays the global batch.
The run folder gets summary.json, metrics.csv, last.ckpt, curves.png, misclassified.png, gradcam.png, confusion.png
(+ lr_finder.png, logs/). A timed run validates and checkpoints only after the last epoch:
--no-val-every-epoch --no-ckpt-every-epoch.
"""
import argparse
import contextlib
import csv
import inspect
import io
import shutil
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from pytorch_lightning.utilities import rank_zero_only

import gradcam
import recipes
import utils
from data import CIFAR10DataModule
from lit_classifier import OPTIMIZERS, LitClassifier
from lr_finder import find_lr
from model import MODELS, build_model, count_parameters
from plumbing import checkpointing, records
from plumbing.ema import EMA
from plumbing.files import UsageError, atomic_savefig, atomic_write_json, atomic_write_text, describe_device

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
# What train.py writes into a run folder; the first three mean that the folder holds a run.
RUN_OUTPUTS = ("last.ckpt", "summary.json", "metrics.csv", "curves.png", "misclassified.png", "gradcam.png",
               "confusion.png", "lr_finder.png", "logs", "tensorboard")
# last.ckpt lives in the run folder beside the logs, so the folder is never empty: nothing to warn about.
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
# Trainer arguments this script sets itself; every other one is a pass-through flag.
OWN_TRAINER_ARGS = {"self", "max_epochs", "logger", "callbacks", "default_root_dir", "enable_checkpointing"}


class EpochMetricsCSV(pl.Callback):
    """Writes metrics.csv, one row per epoch, rewritten atomically after every epoch. An epoch without validation
    (--no-val-every-epoch) leaves val_loss and val_acc empty."""

    def __init__(self, path):
        self.path = Path(path)
        self.rows = []
        self.last_lr = None
        self.validated_epoch = None

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated_epoch = trainer.current_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # The LR this batch trains with (by the epoch's end the scheduler has already stepped past it).
        self.last_lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer, pl_module):
        # In Lightning 2.x the epoch's validation has already run here, so val_* metrics are this epoch's.
        metrics = trainer.callback_metrics
        validated = self.validated_epoch == trainer.current_epoch  # else val_* would be an earlier epoch's
        row = {name: float(metrics[name]) if name in metrics and (validated or not name.startswith("val_")) else ""
               for name in METRIC_COLUMNS[1:-1]}
        row = {"epoch": trainer.current_epoch + 1, **row, "lr": self.last_lr}
        self.rows.append(row)
        if trainer.is_global_zero:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
            atomic_write_text(self.path, text.getvalue())

    def state_dict(self):  # saved in every checkpoint, so a resumed run appends to the rows instead of restarting
        return {"rows": self.rows}

    def load_state_dict(self, state_dict):
        self.rows = list(state_dict["rows"])


def trainer_value(text):
    """Command-line text -> the Python value a Trainer argument expects (bool, None, int, float or str)."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth reading (not None, False or a recipe's)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or action.help is None:
            return action.help
        return super()._get_help_string(action)

    def __init__(self, prog):
        super().__init__(prog, max_help_position=40, width=110)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                                     usage="%(prog)s [options] --out RUN_DIR  |  %(prog)s --resume RUN_DIR")
    parser.add_argument("--recipe", metavar="NAME", help=f"the starting hyperparameters: {', '.join(recipes.RECIPES)} "
                        "(default: the model's own, see recipes.py); the flags below override single values")
    # Recipe values default to SUPPRESS: left out of the namespace, recipes.resolve fills them in.
    from_recipe = dict(default=argparse.SUPPRESS)
    parser.add_argument("--model", metavar="NAME", help=f"{' or '.join(MODELS)} (ResNet-9 or ResNet-18; default: the "
                        "recipe's)", **from_recipe)
    parser.add_argument("--epochs", type=int, metavar="N", help="(recipe)", **from_recipe)
    parser.add_argument("--batch-size", type=int, metavar="N", help="the global batch, split between the devices "
                        "(recipe)", **from_recipe)
    parser.add_argument("--data-dir", default="data", metavar="DIR",
                        help="folder holding (or receiving) cifar-10-batches-py/")
    parser.add_argument("--synthetic", action="store_true", help="generated data: no download, no files")
    parser.add_argument("--train-size", type=int, metavar="N", help="class-balanced subset of the training split")
    parser.add_argument("--test-size", type=int, metavar="N", help="class-balanced subset of the test split")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seeds shuffling, augmentation and weights")
    parser.add_argument("--lr-find", action=argparse.BooleanOptionalAction, help="set the OneCycle peak LR from an "
                        "LR range test (recipe)", **from_recipe)
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder for checkpoints, metrics, summary and plots")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last.ckpt, with the settings it started with")
    parser.add_argument("--overwrite", action="store_true", help="start a new run in an --out folder that holds "
                        "another run, deleting that run's checkpoint, metrics, summary, plots and logs first")
    parser.add_argument("--results-dir", metavar="DIR",
                        help="also write a time-to-accuracy record there (see tools/results_table.py)")
    recipe = parser.add_argument_group("recipe values (default: from the recipe)")
    recipe.add_argument("--optimizer", choices=OPTIMIZERS, **from_recipe)
    recipe.add_argument("--lr", type=float, help="OneCycle peak learning rate", **from_recipe)
    recipe.add_argument("--momentum", type=float, **from_recipe)
    recipe.add_argument("--weight-decay", type=float, **from_recipe)
    recipe.add_argument("--pct-start", type=float, help="share of the steps spent warming up", **from_recipe)
    recipe.add_argument("--div-factor", type=float, help="OneCycle starts at lr / div-factor", **from_recipe)
    recipe.add_argument("--final-div-factor", type=float, help="and ends at lr / div-factor / final-div-factor",
                        **from_recipe)
    recipe.add_argument("--label-smoothing", type=float, **from_recipe)
    recipe.add_argument("--logit-scale", type=float, help="multiplies the logits (Page's ResNet-9 recipe: 0.125; 1 "
                        "for the plain network)", **from_recipe)
    recipe.add_argument("--cutout", type=int, metavar="PIXELS", help="cutout hole size (0: none)", **from_recipe)
    recipe.add_argument("--ema", type=float, metavar="DECAY", help="evaluate, test and save an exponential moving "
                        "average of the weights (0: off); DECAY is per step", **from_recipe)
    recipe.add_argument("--ema-every", type=int, metavar="K", help="update the average every K optimizer steps",
                        **from_recipe)
    recipe.add_argument("--tta", action=argparse.BooleanOptionalAction, help="also report test_acc_tta, the "
                        "accuracy with flip test-time augmentation (test_acc stays single-view)", **from_recipe)
    recipe.add_argument("--tta-translate", action=argparse.BooleanOptionalAction, help="test_acc_tta also averages "
                        "one-pixel translations (airbench's TTA level 2)", **from_recipe)
    recipe.add_argument("--alt-flip", action=argparse.BooleanOptionalAction, help="alternating flips (airbench): "
                        "each image mirrored in every other epoch, in place of a coin flip per epoch", **from_recipe)
    recipe.add_argument("--freeze-bn-weight", action=argparse.BooleanOptionalAction, help="keep the BatchNorm "
                        "scales at 1", **from_recipe)
    recipe.add_argument("--bn-bias-lr", type=float, metavar="FACTOR", help="train BatchNorm biases at FACTOR x the LR "
                        "and weight decay / FACTOR (Page, airbench: 64)", **from_recipe)
    speed = parser.add_argument_group("speed (results do not depend on these)")
    speed.add_argument("--data-path", choices=("auto", "loader", "device"), default="auto",
                       help="loader: albumentations in DataLoader workers; device: the whole data set on the GPU, "
                       "augmented there in batches (plumbing/gpu_data.py); auto: device on CUDA, else loader")
    speed.add_argument("--compile", action="store_true", help="torch.compile the network's training steps (one batch "
                       "shape, dynamic=False; evaluation stays eager)")
    speed.add_argument("--val-every-epoch", action=argparse.BooleanOptionalAction, default=True,
                       help="validate after every epoch (metrics.csv and curves.png get a val point per epoch); "
                       "--no-val-every-epoch validates only after the last one, as a timed run does")
    speed.add_argument("--ckpt-every-epoch", action=argparse.BooleanOptionalAction, default=True,
                       help="write last.ckpt after every epoch (what --resume continues from); "
                       "--no-ckpt-every-epoch writes it only after the last one")
    speed.add_argument("--num-workers", type=int, metavar="N", help="DataLoader workers (default: none when training "
                       "on the CPU, else one per core but the main process's)")
    group = parser.add_argument_group(
        "Lightning Trainer flags", "Any pl.Trainer argument, e.g. --accelerator gpu --devices 2 --strategy ddp "
        "--precision bf16-mixed (true/false/none and numbers are converted). Each is also accepted with "
        "underscores (--max_time).")
    for name, param in inspect.signature(pl.Trainer.__init__).parameters.items():
        if name in OWN_TRAINER_ARGS or param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        dashed, dest = f"--{name.replace('_', '-')}", f"trainer.{name}"
        group.add_argument(dashed, dest=dest, type=trainer_value, default=argparse.SUPPRESS, metavar="VALUE",
                           help=f"default {param.default!r}")
        if "_" in name:  # the underscore spelling works too, without a second line in --help
            group.add_argument(f"--{name}", dest=dest, type=trainer_value, default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
    return parser


def parse_args(argv=None):
    """-> (script options, dict of Trainer keyword arguments given on the command line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    trainer_kwargs = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("trainer.")}
    for key in list(vars(args)):
        if key.startswith("trainer."):
            delattr(args, key)
    if args.resume:
        if args.overwrite:
            parser.error("--resume continues the run in RUN_DIR and --overwrite starts a new one there: give one")
        explicit = checkpointing.explicit_options(build_parser(), argv)
        return checkpointing.resume_settings(args, trainer_kwargs, explicit)
    if args.out is None:
        parser.error("the following arguments are required: --out (or --resume RUN_DIR)")
    return args, trainer_kwargs


def on_cuda(trainer_kwargs):
    return torch.cuda.is_available() and str(trainer_kwargs.get("accelerator", "auto")) in ("auto", "gpu", "cuda")


def on_cpu(trainer_kwargs):
    accelerator = str(trainer_kwargs.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                    and not torch.backends.mps.is_available())


def hardware_defaults(args, trainer_kwargs):
    """Settings that only change speed, unless given. On CUDA: the device-resident data path, mixed precision (bf16
    where the GPU has it, as dawn.py trained in fp16) and cuDNN autotuning (the batch shape is fixed). On the CPU:
    no DataLoader workers, as the network's own threads already use every core and a worker would only take turns
    with them. Returns updated copies."""
    args, trainer_kwargs = argparse.Namespace(**vars(args)), dict(trainer_kwargs)
    if args.data_path == "auto":
        args.data_path = "device" if on_cuda(trainer_kwargs) else "loader"
    if on_cuda(trainer_kwargs):
        trainer_kwargs.setdefault("precision",
                                  "bf16-mixed" if torch.cuda.get_device_capability()[0] >= 8 else "16-mixed")
        trainer_kwargs.setdefault("benchmark", True)
    if on_cpu(trainer_kwargs) and args.num_workers is None:
        args.num_workers = 0
    return args, trainer_kwargs


def check_args(args):
    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}: choose one of {', '.join(MODELS)}")
    if args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
    if args.seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")


def claim_run_folder(out, overwrite):
    """A new run never replaces another by accident: a folder that holds a run is refused, unless `overwrite`, which
    deletes that run's files first (train.py's outputs only, nothing else in the folder)."""
    held = [name for name in RUN_OUTPUTS[:3] if (out / name).exists()]
    if held and not overwrite:
        raise UsageError(f"--out {out} already holds a run ({', '.join(held)}): continue it with --resume {out}, "
                         "start the new run in another folder, or replace the old one with --overwrite")
    if held and rank_zero_only.rank == 0:  # under DDP the other processes start later and find the folder cleared
        for name in RUN_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def make_datamodule(args):
    return CIFAR10DataModule(args.data_dir, args.batch_size, synthetic=args.synthetic, train_size=args.train_size,
                             test_size=args.test_size, seed=args.seed, cutout=args.cutout,
                             num_workers=args.num_workers, data_path=args.data_path, alt_flip=option(args, "alt_flip"))


def option(args, name):
    """A recipe value of `args`, or the default recipe's for a namespace made before the option existed."""
    return getattr(args, name, recipes.DEFAULT[name])


def make_classifier(args, channels_last=None):
    """The LitClassifier of `args`. `channels_last` (default: on the device data path, whose batches are): the
    network and its batches in channels-last layout, what cuDNN's convolutions run fastest on (train.run turns it
    on for every CUDA run)."""
    lit = LitClassifier.from_settings(vars(args))  # what a notebook calls with a recipe; absent options: defaults
    if args.data_path == "device" if channels_last is None else channels_last:
        lit.model.to(memory_format=torch.channels_last)
        lit.channels_last = True
    if args.compile:
        lit.compile_training()
    return lit


def inference_record(args, datamodule, lit):
    """What serving the network needs, kept in every checkpoint (checkpointing.InferenceRecord; app.py reads it)."""
    return {"model_name": args.model, "num_classes": lit.hparams.num_classes, "logit_scale": args.logit_scale,
            "params": count_parameters(lit.model), "classes": tuple(datamodule.classes),
            "mean": tuple(map(float, datamodule.mean)), "std": tuple(map(float, datamodule.std)),
            "data": records.data_set_name(datamodule.source), "train_images": len(datamodule.train_set),
            "recipe": args.recipe, "hyperparameters": {key: getattr(args, key) for key in recipes.SETTINGS}}


def make_trainer(args, trainer_kwargs, out, metrics_csv, run_record, inference=None):
    """`inference`: the record of inference_record(), kept in every checkpoint when given."""
    every_epoch = getattr(args, "ckpt_every_epoch", True)
    callbacks = [
        run_record,  # first: its clock stops at an epoch's end before the other callbacks' epoch-end work
        ModelSummary(max_depth=2),
        # last.ckpt after every epoch (without a monitor, top-1 is the latest epoch; save_last alone would only save
        # at the end) or only after the last, at the epoch's end (after validation and metrics.csv), overwritten in
        # place by a resumed run (no last-v1.ckpt), atomically (AtomicCheckpointIO)
        ModelCheckpoint(dirpath=out, filename=Path(checkpointing.CHECKPOINT).stem, enable_version_counter=False,
                        every_n_epochs=1 if every_epoch else args.epochs, save_on_train_epoch_end=True),
        LearningRateMonitor(logging_interval="step"),
        checkpointing.StopOnNonFinite(out),
        metrics_csv,
        checkpointing.SeedEachEpoch(args.seed),
    ]
    if inference is not None:
        callbacks.append(checkpointing.InferenceRecord(inference, run_record))
    if args.ema:
        # validation, test and last.ckpt use the average
        callbacks.append(EMA(args.ema, every=option(args, "ema_every")))
    loggers = [CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tensorboard")]
    trainer_kwargs = dict(trainer_kwargs)
    if not getattr(args, "val_every_epoch", True):
        trainer_kwargs.setdefault("check_val_every_n_epoch", args.epochs)  # the last epoch's validation only
    plugins = trainer_kwargs.pop("plugins", None)
    plugins = [checkpointing.AtomicCheckpointIO()] + ([] if plugins is None else [plugins])
    try:
        return pl.Trainer(max_epochs=args.epochs, default_root_dir=out, logger=loggers, callbacks=callbacks,
                          plugins=plugins, **trainer_kwargs)
    except (ValueError, TypeError, RuntimeError) as error:  # includes Lightning's MisconfigurationException
        raise UsageError(f"Lightning refused the Trainer flags {trainer_kwargs}: {error}") from None


def check_processes(trainer, strategy, batch_size):
    """Multi-device runs: DDP with one process per device, each started by running this script again."""
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        raise UsageError(f"--strategy {strategy} trains in processes started from inside this "
                         "one, whose records of the run (metrics, timing) never come back to it: use --strategy ddp "
                         "(in a notebook, a Trainer with strategy=\"ddp_notebook\", see the README)")
    if batch_size % trainer.world_size:
        raise UsageError(f"--batch-size {batch_size} is the global batch and must split evenly between the "
                         f"{trainer.world_size} processes (devices x nodes)")


def run(args, trainer_kwargs):
    """Train, test, and write the run folder; returns the summary dict (None in DDP processes other than rank 0,
    which alone writes the folder)."""
    wall_start = time.perf_counter()  # wall clock of the whole run: data loading, LR test, training, testing
    args = recipes.resolve(args)
    args, trainer_kwargs = hardware_defaults(args, trainer_kwargs)
    check_args(args)
    out = Path(args.out)
    if not args.resume:
        claim_run_folder(out, getattr(args, "overwrite", False))
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(args.seed, workers=True)

    datamodule = make_datamodule(args)
    datamodule.prepare_data()
    datamodule.setup("fit")
    resume_from = None
    if args.resume:  # settings, the found LR included, are the stored run's (see checkpointing.resume_settings)
        resume_from, _ = checkpointing.stored_settings(out)
        checkpointing.remove_stale_temporary_files(out)
    elif args.lr_find:
        probe = build_model(args.model, logit_scale=args.logit_scale)
        suggested_lr, figure = find_lr(probe, datamodule.train_dataloader(), optimizer=args.optimizer,
                                       weight_decay=args.weight_decay, momentum=args.momentum)
        atomic_savefig(figure, out / "lr_finder.png")
        if suggested_lr is None:
            raise UsageError("the LR range test found no clear descent to suggest a peak LR (see lr_finder.png); "
                             "run without --lr-find and set --lr")
        print(f"LR range test suggests a OneCycle peak of {suggested_lr:.3g}")
        args.lr = suggested_lr
    lit = make_classifier(args, channels_last=args.data_path == "device" or on_cuda(trainer_kwargs))

    settings = {**vars(args), "trainer": trainer_kwargs}
    metrics_csv = EpochMetricsCSV(out / "metrics.csv")
    run_record = checkpointing.RunRecord(settings)
    trainer = make_trainer(args, trainer_kwargs, out, metrics_csv, run_record,
                           inference_record(args, datamodule, lit))
    check_processes(trainer, trainer_kwargs.get("strategy"), args.batch_size)
    trainer.fit(lit, datamodule=datamodule, ckpt_path=resume_from)
    # training epochs only, this session's and, after a resume, the earlier ones' (checkpointing.RunRecord)
    train_seconds, warmup_seconds = run_record.train_seconds(), run_record.warmup_seconds()
    test_start = time.perf_counter()
    test = trainer.test(lit, datamodule=datamodule, verbose=False)[0]  # current (final-epoch) weights, never "best"
    checkpointing.synchronize(trainer.strategy.root_device)
    eval_seconds = run_record.eval_seconds + time.perf_counter() - test_start
    if not trainer.is_global_zero:
        return None
    test_results = {"test_acc": round(float(test["test_acc"]), 6), "test_images": len(datamodule.test_set),
                    **({"test_acc_tta": round(float(test["test_acc_tta"]), 6)} if args.tta else {})}
    checkpointing.record_test_results(out / checkpointing.CHECKPOINT, test_results)  # last.ckpt serves alone

    train_images = len(datamodule.train_set)
    trained_images = train_images // args.batch_size * args.batch_size * args.epochs  # the partial batch is dropped
    summary = {
        "recipe": args.recipe,
        "model": args.model,
        "params": count_parameters(lit.model),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "devices": trainer.world_size,
        "train_images": train_images,
        "test_images": len(datamodule.test_set),
        "test_acc": round(float(test["test_acc"]), 6),
        **({"test_acc_tta": round(float(test["test_acc_tta"]), 6)} if args.tta else {}),
        "test_loss": round(float(test["test_loss"]), 6),
        "tta": ("mirror+translate" if args.tta_translate else "mirror") if args.tta else None,
        "train_seconds": round(train_seconds, 3),
        "warmup_seconds": None if warmup_seconds is None else round(warmup_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "wall_seconds": None,  # the whole run, plots included: set once they are written
        "train_epoch_seconds": [round(seconds, 3) for seconds in run_record.epoch_seconds],
        "images_per_second": round(trained_images / train_seconds, 1),
        "device": describe_device(trainer.strategy.root_device),
        "data_path": args.data_path,
        "precision": str(trainer.precision),
        "seed": args.seed,
        "data": datamodule.source,
        "resumed_after_epochs": run_record.resumed_after_epochs,
        "settings": settings,
        "versions": {"torch": torch.__version__, "pytorch_lightning": pl.__version__},
    }
    write_plots(lit, datamodule, metrics_csv.rows, out, trainer)
    summary["wall_seconds"] = round(time.perf_counter() - wall_start, 3)
    atomic_write_json(out / "summary.json", summary)
    if args.results_dir:
        records.write_record(args.results_dir, records.record_from_summary(summary))
    return summary


def write_plots(lit, datamodule, rows, out, trainer=None):
    """curves.png, misclassified.png, confusion.png and gradcam.png. With `trainer`, the predictions and GradCAM
    run on its device (its teardown has put the module back on the CPU) and the predictions in its precision, as
    the test did; the module goes back where it was afterwards."""
    atomic_savefig(utils.plot_curves(rows), out / "curves.png")
    home = next(lit.parameters()).device
    if trainer is not None:
        lit.to(trainer.strategy.root_device)
    try:
        with trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext():
            # the whole test split, also under DDP
            probs, labels = utils.predict(lit.model, datamodule.predict_dataloader())
        mistake_plots(lit, datamodule, probs, labels, out)
    finally:
        lit.to(home)


def mistake_plots(lit, datamodule, probs, labels, out):
    index, predicted, confidence = utils.misclassified(probs, labels)
    figure = utils.plot_misclassified(datamodule.test_images, labels, index, predicted, confidence,
                                      datamodule.classes)
    atomic_savefig(figure, out / "misclassified.png")
    atomic_savefig(utils.plot_confusion(utils.confusion_matrix(probs, labels), datamodule.classes),
                   out / "confusion.png")
    shown, layer = index[:8], gradcam.DEFAULT_LAYERS[lit.hparams.model_name]  # gradcam.png: 8 mistakes, 3 rows
    overlays = gradcam.mistake_overlays(lit.model, datamodule.test_images, labels, shown, predicted[:len(shown)],
                                        datamodule.mean, datamodule.std, layer)
    figure = utils.plot_gradcam(datamodule.test_images, labels, shown, predicted, confidence, *overlays,
                                datamodule.classes, layer)
    atomic_savefig(figure, out / "gradcam.png")


def main(argv=None):
    try:
        args, trainer_kwargs = parse_args(argv)
        summary = run(args, trainer_kwargs)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary:
        print(f"test accuracy {summary['test_acc']:.2%} after {summary['epochs']} epochs, "
              f"{summary['train_seconds']:.1f} s ({summary['images_per_second']:.0f} images/s) on "
              f"{summary['device']}; run folder {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
