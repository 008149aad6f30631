"""train.py's command line: the flags, every Lightning Trainer argument passed through, the hardware
defaults, the run folder's claim, and --resume (the stored run's settings back, checked against what
is typed now).

`parse` returns the run's settings in their one shape, a flat dict (what summary.json stores under
"settings"), and the Trainer flags. It knows no recipe or model itself: train.py hands it their
names and the function that fills in a recipe (recipes.resolve), so plumbing stays below the
lessons."""

import argparse
import contextlib
import inspect
import shutil
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from pytorch_lightning.utilities import rank_zero_only

from plumbing import checkpointing, hardware
from plumbing.files import remove_stale_temporary_files
from plumbing.gpu_data import per_process_batch

# What an entry point prints as one `error:` line instead of a traceback: bad flags or files, a
# diverged run.
USER_ERRORS = (ValueError, OSError, MisconfigurationException, checkpointing.TrainingDiverged)
# Trainer arguments train.py sets itself; every other one is a pass-through flag.
OWN_TRAINER_ARGS = {"self", "max_epochs", "logger", "callbacks", "default_root_dir", "plugins"}
# Options that say where the data is or how it is read and shown, never what is computed: a resume
# may change them.
FREE_ON_RESUME = {
    "out",
    "resume",
    "data_dir",
    "num_workers",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.accelerator",
}
NOT_SET = "(not set)"


def trainer_value(text):
    """Command-line text -> the Python value a Trainer argument expects (bool, None, int, float or
    str)."""
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

    def __init__(self, prog):
        super().__init__(prog, max_help_position=40, width=100)

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or action.help is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(description, recipes, models, optimizers):
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=HelpFormatter,
        usage="%(prog)s [options] --out RUN_DIR  |  %(prog)s --resume RUN_DIR",
    )
    add = parser.add_argument
    add(
        "--recipe",
        metavar="NAME",
        help=f"the starting hyperparameters: {', '.join(recipes)} (default: "
        "the model's own, see recipes.py); the flags below override single values",
    )
    add("--model", metavar="NAME", help=f"{' or '.join(models)} (default: the recipe's)")
    add("--epochs", type=int, metavar="N", help="(recipe)")
    add(
        "--batch-size",
        type=int,
        metavar="N",
        help="the global batch, split between the devices "
        "(recipe; 256 when training on a CPU; another batch size scales the recipe's LR linearly)",
    )
    add(
        "--data-dir",
        default="data",
        metavar="DIR",
        help="folder holding (or receiving) cifar-10-batches-py/",
    )
    add("--synthetic", action="store_true", help="generated data: no download, no files")
    add("--train-size", type=int, metavar="N", help="class-balanced subset of the training split")
    add("--test-size", type=int, metavar="N", help="class-balanced subset of the test split")
    add(
        "--seed", type=int, default=0, metavar="N", help="seeds shuffling, augmentation and weights"
    )
    add(
        "--lr-find",
        action=argparse.BooleanOptionalAction,
        help="set the OneCycle peak LR from an LR range test (recipe)",
    )
    add("--out", metavar="RUN_DIR", help="run folder for checkpoints, metrics, summary and plots")
    add(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last.ckpt, with the settings it started with",
    )
    add(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out folder that holds another "
        "run, deleting that run's checkpoint, metrics, summary, plots and logs first",
    )
    add(
        "--results-dir",
        metavar="DIR",
        help="also write a time-to-accuracy record there (see tools/results_table.py)",
    )
    recipe = parser.add_argument_group("recipe values (default: from the recipe)").add_argument
    recipe("--optimizer", choices=optimizers)
    recipe("--lr", type=float, help="OneCycle peak learning rate")
    recipe("--momentum", type=float)
    recipe("--weight-decay", type=float)
    recipe("--pct-start", type=float, help="share of the steps spent warming up")
    recipe("--div-factor", type=float, help="OneCycle starts at lr / div-factor")
    recipe("--final-div-factor", type=float, help="and ends at lr / div-factor / final-div-factor")
    recipe("--label-smoothing", type=float)
    recipe(
        "--logit-scale",
        type=float,
        help="multiplies the logits (dawn: 0.125; 1: the plain network)",
    )
    recipe("--cutout", type=int, metavar="PIXELS", help="cutout hole size (0: none)")
    recipe(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="also report test_acc_tta, the accuracy "
        "with flip test-time augmentation (test_acc stays single-view)",
    )
    speed = parser.add_argument_group("speed (results do not depend on these)").add_argument
    speed(
        "--augment-on",
        choices=("auto", "loader", "device"),
        default="auto",
        help="where augmentation runs. loader: albumentations per image in the DataLoader; "
        "device: the "
        "whole data set on the training device, augmented there in batches; auto: device on CUDA",
    )
    speed(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels-last memory layout "
        "(default: on CUDA, and on CPUs that compute bfloat16 natively)",
    )
    speed(
        "--compile",
        action="store_true",
        help="torch.compile the training steps (evaluation stays eager)",
    )
    speed(
        "--val-every-epoch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="validate after every epoch; --no-val-every-epoch: after the last only, as a timed "
        "run does",
    )
    speed(
        "--ckpt-every-epoch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write last.ckpt (what --resume continues from) after every epoch, else after the "
        "last",
    )
    speed(
        "--num-workers",
        type=int,
        metavar="N",
        help="DataLoader workers (default: none when training "
        "on the CPU, else one per core but the main process's)",
    )
    group = parser.add_argument_group(
        "Lightning Trainer flags",
        "Any pl.Trainer argument, e.g. --accelerator gpu --devices 2 --strategy ddp "
        "--precision bf16-mixed (true/false/none and numbers are converted; --max_time works too).",
    )
    for name, param in inspect.signature(pl.Trainer.__init__).parameters.items():
        if name in OWN_TRAINER_ARGS or param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        dest = f"trainer.{name}"
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=dest,
            type=trainer_value,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=f"default {param.default!r}",
        )
        if "_" in name:  # the underscore spelling works too, without a second line in --help
            group.add_argument(
                f"--{name}",
                dest=dest,
                type=trainer_value,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
    return parser


def parse(argv, description, recipes, models, optimizers, resolve):
    """-> (settings, trainer flags) of a new run (`resolve` fills in the recipe) or of the run
    --resume names."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(description, recipes, models, optimizers)
    given = vars(parser.parse_args(argv))
    trainer_flags = {
        key.split(".", 1)[1]: given.pop(key) for key in list(given) if key.startswith("trainer.")
    }
    if given["resume"]:
        if given["overwrite"]:
            parser.error(
                "--resume continues the run in RUN_DIR and --overwrite starts a new one there: "
                "give one"
            )
        return resumed(given, trainer_flags, explicit_options(parser, argv))
    if given["out"] is None:
        parser.error("the following arguments are required: --out (or --resume RUN_DIR)")
    if given["batch_size"] is None and on_cpu(trainer_flags):
        given["batch_size"] = hardware.CPU_BATCH_SIZE  # resolve() scales the recipe's LR to it
    settings = resolve(given)
    hardware_defaults(settings, trainer_flags)
    check(settings, models)
    if not settings["val_every_epoch"]:
        # the last epoch's only
        trainer_flags.setdefault("check_val_every_n_epoch", settings["epochs"])
    return settings, trainer_flags


def on_cuda(trainer_flags):
    accelerator = str(trainer_flags.get("accelerator", "auto"))
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def on_cpu(trainer_flags):
    accelerator = str(trainer_flags.get("accelerator", "auto"))
    return accelerator == "cpu" or (
        accelerator == "auto"
        and not torch.cuda.is_available()
        and not torch.backends.mps.is_available()
    )


def hardware_defaults(settings, trainer_flags):
    """Settings that change speed only, where not given (plumbing/hardware.py). CUDA: augmentation
    on the device, mixed precision, channels-last, cuDNN autotuning (one batch shape). CPU: bf16 +
    channels-last where the CPU computes bf16 natively, and no DataLoader workers (the network's
    threads already use every core)."""
    cuda, cpu = on_cuda(trainer_flags), on_cpu(trainer_flags)
    if settings["augment_on"] == "auto":
        settings["augment_on"] = "device" if cuda else "loader"
    if cuda or cpu:
        trainer_flags.setdefault("precision", hardware.fast_precision(cuda))
    if cuda:
        trainer_flags.setdefault("benchmark", True)
    if settings["channels_last"] is None:
        settings["channels_last"] = (cuda or cpu) and hardware.fast_channels_last(cuda)
    if cpu and settings["num_workers"] is None:
        settings["num_workers"] = 0


def check(settings, models):
    if settings["model"] not in models:
        raise ValueError(f"unknown model {settings['model']!r}: choose one of {', '.join(models)}")
    if settings["epochs"] < 1:
        raise ValueError(f"--epochs must be at least 1, got {settings['epochs']}")
    if settings["seed"] < 0:
        raise ValueError(f"--seed must be 0 or more, got {settings['seed']}")
    if Path(settings["out"]).is_file():
        raise ValueError(f"--out {settings['out']} is a file, not a folder")


def explicit_options(parser, argv):
    """The option names typed on the command line (argparse alone cannot tell a default from a typed
    value)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resumed(given, trainer_flags, explicit):
    """The stored run's (settings, trainer flags); options typed now must agree with it, but
    FREE_ON_RESUME ones."""
    run_dir = Path(given["resume"])
    _, stored = checkpointing.stored_settings(run_dir)
    stored_trainer = stored.get("trainer", {})
    conflicts = []
    for name in sorted(explicit - FREE_ON_RESUME):
        if name.startswith("trainer."):
            key = name.split(".", 1)[1]
            now, before = trainer_flags[key], stored_trainer.get(key, NOT_SET)
        else:
            now, before = given[name], stored.get(name, given[name])
        if now != before:
            conflicts.append(
                f"--{name.split('.')[-1].replace('_', '-')} {now} (the run has {before})"
            )
    if "out" in explicit and Path(given["out"]).resolve() != run_dir.resolve():
        conflicts.append(
            f"--out {given['out']} (a resumed run writes into its own folder, {run_dir})"
        )
    if conflicts:
        raise ValueError(
            f"--resume {run_dir} continues the run with the settings it started with, and these "
            f"options differ: {'; '.join(conflicts)}. Leave them out, or start a new run in "
            "another --out folder"
        )
    settings = {key: value for key, value in stored.items() if key != "trainer"}
    settings.update({name: given[name] for name in explicit & FREE_ON_RESUME if name in given})
    settings.update(out=str(run_dir), resume=str(run_dir))
    flags = dict(stored_trainer)
    flags.update(
        {
            name.split(".", 1)[1]: trainer_flags[name.split(".", 1)[1]]
            for name in explicit & FREE_ON_RESUME
            if name.startswith("trainer.")
        }
    )
    return settings, flags


def prepare_run_folder(settings, outputs):
    """A new run never replaces another by accident: a folder holding a run (outputs[:3]) is
    refused, unless --overwrite, which deletes that run's `outputs` first (nothing else in the
    folder). A resumed run's folder loses only the temporary files of writes that a killed process
    left behind."""
    out = Path(settings["out"])
    if settings["resume"]:
        remove_stale_temporary_files(out)
        return out
    held = [name for name in outputs[:3] if (out / name).exists()]
    if held and not settings["overwrite"]:
        raise ValueError(
            f"--out {out} already holds a run ({', '.join(held)}): continue it with --resume "
            f"{out}, start the new run in another folder, or replace the old one with --overwrite"
        )
    if (
        held and rank_zero_only.rank == 0
    ):  # under DDP the other processes start later and find it cleared
        for name in outputs:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_processes(trainer, settings, trainer_flags):
    """Multi-device runs, checked before Lightning starts any process: DDP with one process per
    device (each started by running train.py again), and a global batch that splits evenly between
    them."""
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        raise ValueError(
            f"--strategy {trainer_flags.get('strategy')} trains in processes started from inside "
            "this one, whose records of the run never come back to it: use --strategy ddp (in a "
            'notebook, a Trainer with strategy="ddp_notebook", see notebook 6)'
        )
    per_process_batch(settings["batch_size"], trainer.world_size)


@contextlib.contextmanager
def lightning_checks(trainer_flags):
    """Lightning's refusal of a pass-through Trainer flag, as one error naming the flags."""
    try:
        yield
    except (ValueError, TypeError, RuntimeError, MisconfigurationException) as error:
        raise ValueError(f"Lightning refused the Trainer flags {trainer_flags}: {error}") from None
