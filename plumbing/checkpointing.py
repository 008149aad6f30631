"""What makes a run survive a crash: atomic checkpoints, --resume, per-epoch seeding and a stop on
NaN loss.

A run folder's last.ckpt is Lightning's own checkpoint (model, optimizer, OneCycle position, epoch,
callback states); `--resume RUN_DIR` hands it to `trainer.fit(ckpt_path=...)`. Randomness is drawn
from (seed, epoch) rather than carried as state (see SeedEachEpoch and data.EpochSampler), so a
resumed run replays exactly the epochs it lost."""

import os
import pickle
import random
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from plumbing.files import atomic_torch_save, describe_device

CHECKPOINT = "last.ckpt"
SERVING = "serving"  # the checkpoint's serving record: what the app needs (ServingRecord)


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN/inf: the run stops before a checkpoint could store
    them."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through files.atomic_torch_save (temporary file beside the checkpoint, fsync, rename):
    Lightning's own save moves a file from the system temp folder, not atomic on a mounted Google
    Drive, and never fsyncs."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if "://" in str(
            path
        ):  # remote storage (s3://, gs://...): fsspec's transaction is the best there is
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


def synchronize(device):
    """Wait for the device's queued work, so that a clock read afterwards counts it (CUDA runs
    asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RunRecord(pl.Callback):
    """Keeps the run's settings and its timings in every checkpoint (the callback state Lightning
    saves).

    Each training epoch is timed from its start to its end with the device synchronised at both
    ends, less any validation inside it (Lightning validates before on_train_epoch_end). The
    checkpoint (ModelCheckpoint, which Lightning runs after every other callback) and the sanity
    check fall outside; put this callback first, so that the other callbacks' epoch-end work does
    too. Validation and test time go to eval_seconds. The times of all sessions of a resumed run add
    up; the epoch that a crash interrupted is not counted (it is trained again)."""

    def __init__(self, settings):
        self.settings = settings
        self.epoch_seconds = []  # training time of each finished epoch, over all sessions
        self.session_starts = []  # index into epoch_seconds of each session's first epoch
        self.eval_seconds = 0.0  # validation, sanity checks included, over all sessions
        self.resumed_after_epochs = []
        self.load_before = None  # the load average (1, 5, 15 min) as this session's training began
        self._restored = False
        self._epoch_start = self._validation_start = None
        self._paused = 0.0

    def on_train_start(self, trainer, pl_module):
        self.load_before = os.getloadavg()
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

    def on_test_start(self, trainer, pl_module):
        self.on_validation_start(trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        self.on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start - self._paused)
        self._epoch_start = None

    def train_seconds(self):
        return sum(self.epoch_seconds)

    def warmup_seconds(self):
        """What the first epoch of each session took beyond the median of the other epochs: the
        one-time work of a session (cuDNN autotuning, torch.compile, starting DataLoader workers).
        None without another epoch to compare with. Every epoch does the same work otherwise (the
        last partial batch is dropped)."""
        firsts = [i for i in set(self.session_starts) if i < len(self.epoch_seconds)]
        others = [s for i, s in enumerate(self.epoch_seconds) if i not in firsts]
        if not others:
            return None
        typical = float(np.median(others))
        return sum(max(0.0, self.epoch_seconds[i] - typical) for i in firsts)

    def state_dict(self):
        return {
            "settings": self.settings,
            "train_seconds": self.train_seconds(),
            "epoch_seconds": list(self.epoch_seconds),
            "session_starts": list(self.session_starts),
            "eval_seconds": self.eval_seconds,
            "resumed_after_epochs": list(self.resumed_after_epochs),
        }

    def load_state_dict(self, state_dict):
        # The settings are not taken back: resume_settings() already checked the command line
        # against them.
        self.epoch_seconds = list(state_dict["epoch_seconds"])
        self.session_starts = list(state_dict["session_starts"])
        self.eval_seconds = state_dict["eval_seconds"]
        self.resumed_after_epochs = list(state_dict["resumed_after_epochs"])
        self._restored = True


class ServingRecord(pl.Callback):
    """Keeps in every checkpoint, as checkpoint["serving"], what the app needs to use the network
    without its run folder: `record` (model, classes, mean/std of the training data, data set,
    recipe...) plus the epochs done, the training time and the device. report.py adds the test
    accuracy once testing is done (record_test_results)."""

    def __init__(self, record, run_record):
        self.record = record
        self.run_record = run_record

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[SERVING] = {
            **self.record,
            "epochs": trainer.current_epoch + 1,
            "train_seconds": round(self.run_record.train_seconds(), 3),
            "device": describe_device(trainer.strategy.root_device),
        }


def record_test_results(path, results):
    """Adds the test results (plain numbers) to the serving record of the checkpoint at `path`,
    atomically."""
    checkpoint = read_checkpoint(path)
    checkpoint.setdefault(SERVING, {}).update(results)
    atomic_torch_save(checkpoint, path)


def epoch_seed(seed, epoch):
    """A 32-bit seed for one epoch, drawn by NumPy's SeedSequence so nearby (seed, epoch) pairs give
    unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class SeedEachEpoch(pl.Callback):
    """Seeds Python, NumPy and torch from (seed, epoch) just before every epoch's first training
    step.

    Whatever a training step draws (dropout, mixing...) is then the same in a resumed run as in an
    uninterrupted one. Saved RNG states could not promise that: what Lightning draws in between
    differs (a DataLoader iterator takes a torch seed when it is made, and a resumed session makes
    its first one earlier)."""

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

    The loss is checked every `log_every_n_steps` steps (reading it waits for the GPU, as logging
    does) and the weights at every epoch's end, before ModelCheckpoint (which Lightning always runs
    last) would store them."""

    def __init__(self, run_dir):
        self.checkpoint = Path(run_dir) / CHECKPOINT

    def _stop(self, trainer, what):
        done = trainer.current_epoch  # epochs completed, hence the epoch last.ckpt holds
        kept = (
            f"{self.checkpoint} still holds epoch {done}, the last finite one"
            if done and self.checkpoint.is_file()
            else "no checkpoint was written (the first epoch did not finish)"
        )
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        raise TrainingDiverged(
            f"training diverged: {what} in epoch {done + 1}, step {trainer.global_step} "
            f"(learning rate {lr:.3g}); {kept}. Start a new run with a lower --lr"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % trainer.log_every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        bad = isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all()
        # Under DDP every process stops if any one's loss is bad (one stopping alone would leave the
        # others waiting).
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            self._stop(
                trainer,
                f"the training loss became {loss.float().mean().item()}"
                if bad
                else "another process's training loss became NaN/inf",
            )

    def on_train_epoch_end(self, trainer, pl_module):
        bad = [
            name
            for name, value in pl_module.state_dict().items()
            if value.is_floating_point() and not torch.isfinite(value).all()
        ]
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            self._stop(
                trainer,
                f"{len(bad)} weight tensors became NaN/inf ({', '.join(bad[:3])}...)"
                if bad
                else "another process's weights became NaN/inf",
            )


# -----------------------------------------------------------------------------------------------
# resume
def read_checkpoint(path):
    """The checkpoint dict at `path`, or a ValueError naming the file when it is truncated, corrupt
    or foreign."""
    path = Path(path)
    try:  # weights_only: tensors and containers, never code (the app may get anyone's file)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # torch's wording for a class it will not import
            raise ValueError(
                f"{path} ({path.stat().st_size} bytes) is not a readable checkpoint: the file is "
                "truncated or corrupt (it does not unpickle)"
            ) from None
        raise ValueError(
            f"{path} is not a checkpoint written by train.py: it holds Python objects other than "
            f"tensors "
            "and plain containers, which are not loaded, for safety"
        ) from None
    except Exception as error:  # a truncated zip archive, random bytes...
        raise ValueError(
            f"{path} ({path.stat().st_size} bytes) is not a readable checkpoint: the file is "
            f"truncated or "
            f"corrupt ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path} is not a checkpoint written by train.py (it holds a "
            f"{type(checkpoint).__name__})"
        )
    return checkpoint


def stored_settings(run_dir):
    """(checkpoint path, settings dict) of the run in `run_dir`, or an error saying why it cannot be
    resumed."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: there is no such run folder")
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume {run_dir}: there is no {CHECKPOINT} to resume from (the run stopped "
            f"before its "
            "first epoch ended, or it ran with --no-ckpt-every-epoch); start it again with --out "
            f"{run_dir}"
        )
    record = read_checkpoint(path).get("callbacks", {}).get(RunRecord.__qualname__)
    if not isinstance(record, dict) or "settings" not in record:
        raise ValueError(
            f"{path} does not record the run's settings, so it cannot be resumed safely; start a "
            "new run"
        )
    return path, record["settings"]
