"""What makes a run survive a crash: atomic checkpoints, --resume, per-epoch seeding and a stop on NaN loss.

A run folder's last.ckpt is Lightning's own checkpoint (model, optimizer, OneCycle position, epoch, callback states);
`--resume RUN_DIR` hands it to `trainer.fit(ckpt_path=...)`. Randomness is drawn from (seed, epoch) rather than
carried as state (see SeedEachEpoch and data.EpochSampler), so a resumed run replays exactly the epochs it lost.
"""
import argparse
import pickle
import random
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from plumbing.files import UsageError, atomic_torch_save, describe_device

CHECKPOINT = "last.ckpt"
INFERENCE = "inference"  # the checkpoint's record of what serving the network needs (InferenceRecord)
# Options that say where the data is or how it is read and shown, never what is computed: a resume may change them.
FREE_ON_RESUME = {"out", "resume", "data_dir", "num_workers",
                  "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.accelerator"}
NOT_SET = "(not set)"


class TrainingDiverged(UsageError):
    """The loss or the weights became NaN/inf: the run stops before a checkpoint could store them."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through utils.atomic_torch_save: a temporary file beside the checkpoint, fsync, rename.

    Lightning's own save goes through a temporary file in the system temp folder and shutil.move, which is a rename
    only when both are on one filesystem (a run folder on a mounted Google Drive is not) and never fsyncs."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if "://" in str(path):  # remote storage (s3://, gs://...): fsspec's transaction is the best there is
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


def synchronize(device):
    """Wait for the device's queued work, so that a clock read afterwards counts it (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RunRecord(pl.Callback):
    """Keeps the run's settings and its timings in every checkpoint (the callback state Lightning saves).

    Each training epoch is timed from its start to its end with the device synchronised at both ends, less any
    validation inside it (Lightning validates before on_train_epoch_end). The checkpoint (ModelCheckpoint, which
    Lightning runs after every other callback) and the sanity check fall outside; put this callback first, so that
    the other callbacks' epoch-end work does too. Validation time goes to eval_seconds. The times of all sessions
    of a resumed run add up; the epoch that a crash interrupted is not counted (it is trained again)."""

    def __init__(self, settings):
        self.settings = settings
        self.epoch_seconds = []      # training time of each finished epoch, over all sessions
        self.session_starts = []     # index into epoch_seconds of each session's first epoch
        self.eval_seconds = 0.0      # validation, sanity checks included, over all sessions
        self.seconds_before = 0.0    # training time recorded by a train.py older than epoch_seconds
        self.resumed_after_epochs = []
        self._restored = False
        self._epoch_start = self._validation_start = None
        self._paused = 0.0

    def on_train_start(self, trainer, pl_module):
        if self._restored:
            self.resumed_after_epochs.append(trainer.current_epoch)
        self.session_starts.append(len(self.epoch_seconds))

    def on_train_epoch_start(self, trainer, pl_module):
        synchronize(pl_module.device)
        self._epoch_start, self._paused = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, pl_module):
        synchronize(pl_module.device)
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        synchronize(pl_module.device)
        seconds = time.perf_counter() - self._validation_start
        self.eval_seconds += seconds
        if self._epoch_start is not None:
            self._paused += seconds

    def on_train_epoch_end(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start - self._paused)
        self._epoch_start = None

    def train_seconds(self):
        return self.seconds_before + sum(self.epoch_seconds)

    def warmup_seconds(self):
        """What the first epoch of each session took beyond the median of the other epochs: the one-time work of a
        session (cuDNN autotuning, torch.compile, starting DataLoader workers). None without another epoch to
        compare with. Every epoch does the same work otherwise (the last partial batch is dropped)."""
        firsts = [i for i in set(self.session_starts) if i < len(self.epoch_seconds)]
        others = [s for i, s in enumerate(self.epoch_seconds) if i not in firsts]
        if not others:
            return None
        typical = float(np.median(others))
        return sum(max(0.0, self.epoch_seconds[i] - typical) for i in firsts)

    def state_dict(self):
        return {"settings": self.settings, "train_seconds": self.train_seconds(),
                "epoch_seconds": list(self.epoch_seconds), "session_starts": list(self.session_starts),
                "eval_seconds": self.eval_seconds, "resumed_after_epochs": list(self.resumed_after_epochs)}

    def load_state_dict(self, state_dict):
        # The settings are not taken back: resume_settings() already checked the command line against them.
        if "epoch_seconds" in state_dict:
            self.epoch_seconds = list(state_dict["epoch_seconds"])
            self.session_starts = list(state_dict["session_starts"])
            self.eval_seconds = state_dict["eval_seconds"]
        else:  # written by an older train.py: one total, validation and checkpoints included
            self.seconds_before = state_dict["train_seconds"]
        self.resumed_after_epochs = list(state_dict["resumed_after_epochs"])
        self._restored = True


class InferenceRecord(pl.Callback):
    """Keeps in every checkpoint, as checkpoint["inference"], what serving the network needs without its run folder:
    `record` (model, classes, mean/std of the training data, data set, recipe...) plus the epochs done, the training
    time and the device. train.py adds the test accuracy once testing is done (record_test_results)."""

    def __init__(self, record, run_record):
        self.record = record
        self.run_record = run_record

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[INFERENCE] = {**self.record, "epochs": trainer.current_epoch + 1,
                                 "train_seconds": round(self.run_record.train_seconds(), 3),
                                 "device": describe_device(trainer.strategy.root_device)}


def record_test_results(path, results):
    """Adds the test results (plain numbers) to the inference record of the checkpoint at `path`, atomically."""
    checkpoint = read_checkpoint(path)
    checkpoint.setdefault(INFERENCE, {}).update(results)
    atomic_torch_save(checkpoint, path)


def epoch_seed(seed, epoch):
    """A 32-bit seed for one epoch, drawn by NumPy's SeedSequence so nearby (seed, epoch) pairs give unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class SeedEachEpoch(pl.Callback):
    """Seeds Python, NumPy and torch from (seed, epoch) just before every epoch's first training step.

    Whatever a training step draws (dropout, mixing...) is then the same in a resumed run as in an uninterrupted one.
    Saved RNG states could not promise that: what Lightning draws in between differs (a DataLoader iterator takes
    a torch seed when it is made, and a resumed session makes its first one earlier)."""

    def __init__(self, seed):
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx:
            return
        seed = epoch_seed(self.seed, trainer.current_epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # every device's generator


class StopOnNonFinite(pl.Callback):
    """Stops training with TrainingDiverged once the loss or the weights stop being finite.

    The loss is checked every `log_every_n_steps` steps (reading it waits for the GPU, as logging does) and the
    weights at every epoch's end, before ModelCheckpoint (which Lightning always runs last) would store them."""

    def __init__(self, run_dir):
        self.checkpoint = Path(run_dir) / CHECKPOINT

    def _stop(self, trainer, what):
        done = trainer.current_epoch  # epochs completed, hence the epoch last.ckpt holds
        kept = (f"{self.checkpoint} still holds epoch {done}, the last finite one" if done and self.checkpoint.is_file()
                else "no checkpoint was written (the first epoch did not finish)")
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        raise TrainingDiverged(f"training diverged: {what} in epoch {done + 1}, step {trainer.global_step} "
                               f"(learning rate {lr:.3g}); {kept}. Start a new run with a lower --lr")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % trainer.log_every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        bad = isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all()
        # Under DDP every process stops if any one's loss is bad (one stopping alone would leave the others waiting).
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            self._stop(trainer, f"the training loss became {loss.float().mean().item()}" if bad
                       else "another process's training loss became NaN/inf")

    def on_train_epoch_end(self, trainer, pl_module):
        bad = [name for name, value in pl_module.state_dict().items()
               if value.is_floating_point() and not torch.isfinite(value).all()]
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            self._stop(trainer, f"{len(bad)} weight tensors became NaN/inf ({', '.join(bad[:3])}...)" if bad
                       else "another process's weights became NaN/inf")


# ---------------------------------------------------------------------------------------------------------- resume
def read_checkpoint(path):
    """The checkpoint dict at `path`, or a UsageError naming the file when it is truncated, corrupt or foreign."""
    path = Path(path)
    try:  # weights_only: tensors and plain containers, never code (the app may be handed anyone's file)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # torch's wording for a class it will not import
            raise UsageError(f"{path} ({path.stat().st_size} bytes) is not a readable checkpoint: the file is "
                             "truncated or corrupt (it does not unpickle)") from None
        raise UsageError(f"{path} is not a checkpoint written by train.py: it holds Python objects other than tensors "
                         "and plain containers, which are not loaded, for safety") from None
    except Exception as error:  # a truncated zip archive, random bytes...
        raise UsageError(f"{path} ({path.stat().st_size} bytes) is not a readable checkpoint: the file is truncated or "
                         f"corrupt ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"{path} is not a checkpoint written by train.py (it holds a {type(checkpoint).__name__})")
    return checkpoint


def stored_settings(run_dir):
    """(checkpoint path, settings dict) of the run in `run_dir`, or a UsageError saying why it cannot be resumed."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: there is no such run folder")
    if not path.is_file():
        raise UsageError(f"--resume {run_dir}: there is no {CHECKPOINT} to resume from (the run stopped before its "
                         "first epoch ended, or it ran with --no-ckpt-every-epoch); start it again with --out "
                         f"{run_dir}")
    record = read_checkpoint(path).get("callbacks", {}).get(RunRecord.__qualname__)
    if not isinstance(record, dict) or "settings" not in record:
        raise UsageError(f"{path} does not record the run's settings (written by an older train.py?), so it "
                         "cannot be resumed safely; start a new run")
    return path, record["settings"]


def explicit_options(parser, argv):
    """The option names given on the command line (argparse alone cannot tell a typed default from an absent one)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resume_settings(args, trainer_kwargs, explicit):
    """(args, trainer_kwargs) of the stored run in `args.resume`; options given now must agree with it.

    `explicit` names the options typed on the command line (dest names, Trainer flags as "trainer.NAME"). Only the
    FREE_ON_RESUME ones may differ from the stored run; any other difference is a UsageError listing them all."""
    run_dir = Path(args.resume)
    _, settings = stored_settings(run_dir)
    stored_trainer = settings.get("trainer", {})
    conflicts = []
    for name in sorted(explicit - FREE_ON_RESUME):
        if name.startswith("trainer."):
            now, before = trainer_kwargs[name.split(".", 1)[1]], stored_trainer.get(name.split(".", 1)[1], NOT_SET)
        else:
            now, before = getattr(args, name), settings.get(name, getattr(args, name))
        if now != before:
            conflicts.append(f"--{name.split('.')[-1].replace('_', '-')} {now} (the run has {before})")
    if "out" in explicit and Path(args.out).resolve() != run_dir.resolve():
        conflicts.append(f"--out {args.out} (a resumed run writes into its own folder, {run_dir})")
    if conflicts:
        raise UsageError(f"--resume {run_dir} continues the run with the settings it started with, and these options "
                         f"differ: {'; '.join(conflicts)}. Leave them out, or start a new run in another --out folder")
    # Every stored setting, also those the command line left to the recipe (absent from `args`).
    merged = {**vars(args), **{name: value for name, value in settings.items() if name != "trainer"}}
    merged.update({name: getattr(args, name) for name in explicit & FREE_ON_RESUME if hasattr(args, name)})
    merged.update(out=str(run_dir), resume=str(run_dir))
    trainer = dict(stored_trainer)
    trainer.update({name.split(".", 1)[1]: trainer_kwargs[name.split(".", 1)[1]]
                    for name in explicit & FREE_ON_RESUME if name.startswith("trainer.")})
    return argparse.Namespace(**merged), trainer


def remove_stale_temporary_files(run_dir):
    """Delete the temporary files of atomic writes that a killed process left behind (utils.atomic_write_bytes)."""
    for path in Path(run_dir).glob(".*.tmp"):
        path.unlink(missing_ok=True)
