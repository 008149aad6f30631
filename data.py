"""CIFAR-10 data: download, read the python pickles, a synthetic stand-in, mean/std, augmentations,
DataModule.

Images are kept as uint8 arrays of shape (N, 32, 32, 3) until the transforms turn them into
normalised tensors.
"""

import http.client
import os
import pickle
import random
import socket
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from filelock import FileLock
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import model
from plumbing.gpu_data import DeviceBatches, per_process_batch, rank_slice
from recipes import DEFAULT
from utils import cached_channel_stats, channel_stats, eval_transforms, train_transforms

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
DOWNLOAD_TIMEOUT = 30  # seconds without a byte from the server: the attempt has stalled
DOWNLOAD_ATTEMPTS = 3  # after a stalled or cut connection (a refused one means offline: no retry)
DOWNLOAD_RETRY_WAIT = 5  # seconds between attempts
# Where the training images are augmented: albumentations per image in the DataLoader workers, or
# whole batches on the training device (plumbing/gpu_data.py).
AUGMENT_ON = ("loader", "device")
WAYS_OUT = f"Put a '{FOLDER}' folder in --data-dir, or use --synthetic."


# ----------------------------------------------------------------------------------- the real data
def cifar_folder(data_dir) -> Path:
    """`data_dir/cifar-10-batches-py`, or `data_dir` itself when it already is that folder."""
    data_dir = Path(data_dir)
    return data_dir if data_dir.name == FOLDER else data_dir / FOLDER


def has_cifar10(data_dir) -> bool:
    folder = cifar_folder(data_dir)
    return all((folder / name).is_file() for name in TRAIN_FILES + TEST_FILES)


def download_cifar10(data_dir, url=None, md5=CIFAR_MD5) -> Path:
    """Fetch and unpack the official archive (progress bar, md5 check) unless the batches are there.

    An archive already in the folder is used only if its MD5 is right (torchvision checks), so a
    download cut short or corrupted on disk is fetched again; one that arrives corrupt is deleted
    and reported."""
    url = url or CIFAR_URL
    folder = cifar_folder(data_dir)
    if has_cifar10(data_dir):
        return folder
    missing = [name for name in TRAIN_FILES + TEST_FILES if not (folder / name).is_file()]
    absent = (
        f"{folder} lacks {', '.join(missing)}"
        if folder.is_dir()
        else f"CIFAR-10 is not in {folder}"
    )
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder.parent / ".cifar-10-download.lock")
        lock.acquire()
    except OSError as error:  # a read-only folder
        raise FileNotFoundError(
            f"{absent} and cannot be downloaded there ({type(error).__name__}: {error}). {WAYS_OUT}"
        ) from None
    # Processes that start together (DDP under torchrun, nodes sharing the folder) download one at
    # a time: the later ones find the batches there.
    try:
        return folder if has_cifar10(data_dir) else fetch_and_unpack(url, folder, md5, absent)
    finally:
        lock.release()


def fetch_and_unpack(url, folder, md5, absent):
    from torchvision.datasets.utils import download_url, extract_archive  # only needed here

    root, archive = folder.parent, folder.parent / os.path.basename(url)
    try:
        download_with_retries(download_url, url, root, md5)
    except RuntimeError:  # torchvision's "File not found or corrupted.": the MD5 check failed
        archive.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"{absent}, and the archive downloaded from {url} is corrupt (its MD5 checksum is not "
            f"{md5}), so it was deleted. Run again to download it afresh. {WAYS_OUT}"
        ) from None
    except Exception as error:  # URLError, HTTPError, socket timeouts, a read-only folder
        archive.unlink(missing_ok=True)  # a partial download (a complete one is not fetched again)
        cause = f"{type(error).__name__}: {error}"
        if stalled_or_cut(error):
            raise FileNotFoundError(
                f"{absent} and the download from {url} stalled or was cut {DOWNLOAD_ATTEMPTS} "
                f"times (the last time: {cause}; a stall is {DOWNLOAD_TIMEOUT} s without data). "
                f"Try again later, download the archive elsewhere and put its '{FOLDER}' folder "
                "in --data-dir, or use --synthetic."
            ) from None
        raise FileNotFoundError(
            f"{absent} and could not be downloaded from {url} ({cause}). " + WAYS_OUT
        ) from None
    try:
        extract_archive(str(archive), str(root))
    except Exception as error:  # a tar error despite the right MD5: a full disk, a foreign archive
        raise OSError(
            f"{archive} could not be unpacked into {root} ({type(error).__name__}: {error})"
        ) from None
    if not has_cifar10(folder):
        raise ValueError(
            f"the archive from {url} did not contain {FOLDER}/ with "
            f"{', '.join(TRAIN_FILES + TEST_FILES)}"
        )
    return folder


def stalled_or_cut(error):
    reason = getattr(error, "reason", error)  # urllib's URLError wraps the socket's error
    return isinstance(reason, (TimeoutError, ConnectionResetError, http.client.IncompleteRead))


def download_with_retries(download_url, url, root, md5):
    """torchvision's download_url with a timeout on every socket operation (it sets none, so a
    stalled connection would wait for ever) and DOWNLOAD_ATTEMPTS attempts after a stall or cut."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # what urllib uses when given no timeout
    try:
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                return download_url(url, str(root), md5=md5)
            except Exception as error:
                if attempt == DOWNLOAD_ATTEMPTS or not stalled_or_cut(error):
                    raise
                print(
                    f"download attempt {attempt} of {DOWNLOAD_ATTEMPTS} failed "
                    f"({type(error).__name__}: {error}); trying again in {DOWNLOAD_RETRY_WAIT} s"
                )
                time.sleep(DOWNLOAD_RETRY_WAIT)
    finally:
        socket.setdefaulttimeout(previous)


def read_batch(path):
    """One CIFAR-10 python batch -> (uint8 images N x 32 x 32 x 3, int64 labels, batch_label)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: --data-dir must hold the complete "
            f"'{FOLDER}' folder ({', '.join(TRAIN_FILES + TEST_FILES)}), "
            "or use --synthetic"
        )
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
    except Exception as error:  # a truncated or foreign file raises anything, EOFError and up
        raise ValueError(
            f"{path} is not a readable CIFAR-10 batch ({type(error).__name__}: "
            f"{error}); delete the folder so it is downloaded again"
        ) from None
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: expected a dict with 'data' and 'labels'"
        )
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    rows_of_pixels = data.ndim == 2 and data.shape[1] == 3072 and len(labels) == len(data)
    if data.dtype != np.uint8 or not rows_of_pixels:
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: 'data' is {data.dtype} {data.shape}, "
            f"expected uint8 (N, 3072) with N = {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"{path} has labels outside 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64), str(batch.get("batch_label", ""))


def load_cifar10(data_dir):
    """Read the standard pickles (the official archive, or any folder in that format) into uint8
    arrays."""
    folder = cifar_folder(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no '{FOLDER}' folder in {data_dir}: run without --synthetic on a "
            "machine with network to download it, point --data-dir at a folder "
            "that holds it, or use --synthetic"
        )
    train = [read_batch(folder / name) for name in TRAIN_FILES]
    test_images, test_labels, _ = read_batch(folder / TEST_FILES[0])
    copy = "(JPEG offline copy)" if "JPEG" in train[0][2] else "(official)"
    return {
        "train_images": np.concatenate([b[0] for b in train]),
        "train_labels": np.concatenate([b[1] for b in train]),
        "test_images": test_images,
        "test_labels": test_labels,
        "source": f"CIFAR-10 {copy} in {folder}",
    }


def write_cifar_folder(
    data_dir, train_images, train_labels, test_images, test_labels, batch_label="synthetic"
):
    """Write arrays in the official pickle layout (5 train batches + test batch + batches.meta)."""
    folder = cifar_folder(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    splits = [(TRAIN_FILES, train_images, train_labels), (TEST_FILES, test_images, test_labels)]
    for names, images, labels in splits:
        for name, index in zip(names, np.array_split(np.arange(len(labels)), len(names))):
            rows = images[index].transpose(0, 3, 1, 2).reshape(len(index), -1)
            batch = {
                "batch_label": f"{batch_label} {name}",
                "labels": labels[index].tolist(),
                "data": np.ascontiguousarray(rows, dtype=np.uint8),
                "filenames": [f"{i}.png" for i in index],
            }
            with open(folder / name, "wb") as f:
                pickle.dump(batch, f, protocol=4)
    meta = {"label_names": list(CLASSES), "num_cases_per_batch": 10000, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=4)
    return folder


# ------------------------------------------------------------------------------ the synthetic data
PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ],
    dtype=np.float32,
)


def make_synthetic(n, seed=0):
    """`n` learnable CIFAR-like images: class c is shape c % 5 (disk, square, triangle, bar, ring)
    in colour c, at a random place and size, on a noisy random background.
    Returns (uint8 N x 32 x 32 x 3, int64 labels)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    cy, cx = (rng.uniform(11, 21, (2, n, 1, 1))).astype(np.float32)
    r = rng.uniform(5, 9, (n, 1, 1)).astype(np.float32)
    dy, dx = yy - cy, xx - cx
    dist = np.sqrt(dx**2 + dy**2)
    masks = np.stack(
        [
            dist <= r,  # disk
            (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r),  # square
            (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2),  # triangle
            (np.abs(dy) <= r / 3) & (np.abs(dx) <= 1.3 * r),  # bar
            (dist <= r) & (dist >= r / 2),  # ring
        ]
    )
    mask = masks[labels % 5, np.arange(n)][..., None]
    background = rng.uniform(0, 110, (n, 1, 1, 3)) + rng.normal(0, 18, (n, 32, 32, 3))
    colour = PALETTE[labels][:, None, None, :] + rng.normal(0, 18, (n, 1, 1, 3))
    foreground = colour + rng.normal(0, 12, (n, 32, 32, 3))
    images = np.where(mask, foreground, background)
    return np.clip(images, 0, 255).astype(np.uint8), labels


class Draw(NamedTuple):
    """One image drawn by EpochSampler: its index and the (seed, epoch) of its augmentation."""

    index: int
    seed: int
    epoch: int


class ImageArrayDataset(Dataset):
    """uint8 NHWC images + labels, transformed one image at a time by an albumentations pipeline.

    Indexed by an int, the pipeline uses its own random state. Indexed by EpochSampler's Draws (a
    batch at a time, through __getitems__), the batch's augmentation is seeded from its first Draw,
    so it no longer depends on which DataLoader worker makes it, nor on the batches made before
    (albumentations 2 ignores the global seeds)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys):
        if isinstance(keys[0], Draw):
            rng = np.random.default_rng([keys[0].seed, keys[0].epoch, keys[0].index])
            self.transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
            keys = [key.index for key in keys]
        return [(self.transform(image=self.images[i])["image"], int(self.labels[i])) for i in keys]


class EpochSampler(DistributedSampler):
    """Shuffles with a permutation drawn from (seed, epoch), not from a running random state, and
    hands out Draws.

    Any epoch can thus be replayed exactly, after a resume (Lightning calls set_epoch) and with any
    number of workers. Without set_epoch calls (a plain loop) every pass counts as the next epoch.

    Under DDP, process `rank` of `num_replicas` takes its share of every global batch of
    `batch_size` images of the permutation (gpu_data.rank_slice): the shares are disjoint, and at
    each step the processes' batches together are the one-device batch. The last partial global
    batch is dropped, as training drops it (one batch shape). It is a DistributedSampler so that
    Lightning uses it as it is, rather than wrapping it in a sampler that would not pass set_epoch
    on."""

    # DistributedSampler.__init__ is not called: it would pad the shares and needs a data set.
    def __init__(self, size, seed, epoch=0, num_replicas=1, rank=0, batch_size=None):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of the {num_replicas} processes")
        self.size, self.seed, self.epoch = size, seed, epoch
        self.num_replicas, self.rank, self.batch_size = num_replicas, rank, batch_size or size
        self.local_batch = per_process_batch(self.batch_size, num_replicas)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size // self.batch_size * self.local_batch

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        full = self.size // self.batch_size * self.batch_size
        batches = order[:full].reshape(-1, self.batch_size)
        mine = batches[:, rank_slice(self.batch_size, self.num_replicas, self.rank)].reshape(-1)
        return iter([Draw(int(i), self.seed, epoch) for i in mine])


# -------------------------------------------------------------------------------------- DataModule
def balanced_subset(labels, n, seed, what="--train-size"):
    """Indices of `n` images spread evenly over the classes (the first n % 10 get one more)."""
    classes = len(CLASSES)
    if n < classes:
        raise ValueError(
            f"{what} {n} is too small: it needs at least one image per class ({classes})"
        )
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(classes):
        want = n // classes + (c < n % classes)
        members = np.flatnonzero(labels == c)
        if want > len(members):
            raise ValueError(
                f"{what} {n} asks for {want} images of class '{CLASSES[c]}' but the "
                f"data has {len(members)} ({len(labels)} images in all)"
            )
        picked.append(rng.permutation(members)[:want])
    return rng.permutation(np.concatenate(picked))


def default_num_workers():
    """One worker per spare core (the main process needs one), at most 8."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(0, min(8, cores - 1))


class CIFAR10DataModule(pl.LightningDataModule):
    """CIFAR-10 (or the synthetic stand-in) with albumentations augmentation; the test split doubles
    as validation.

    `augment_on="device"` serves the same augmentations from the whole data set held on the
    training device (gpu_data.DeviceBatches) instead of DataLoader workers. Training drops the last
    partial batch (one batch shape throughout); evaluation sees every image.

    `batch_size` is the global batch: under DDP each of N processes gets batch_size / N images of it
    (so a recipe's batch and learning rate mean the same on any number of devices), and evaluates
    its own 1/N of the test split.
    """

    def __init__(
        self,
        data_dir="data",
        batch_size=DEFAULT["batch_size"],
        synthetic=False,
        train_size=None,
        test_size=None,
        seed=0,
        cutout=DEFAULT["cutout"],
        num_workers=None,
        augment_on="loader",
    ):
        super().__init__()
        if augment_on not in AUGMENT_ON:
            raise ValueError(
                f"unknown augment_on {augment_on!r}: choose one of {', '.join(AUGMENT_ON)}"
            )
        if batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
        for name, size in (("--train-size", train_size), ("--test-size", test_size)):
            if size is not None and size < len(CLASSES):
                raise ValueError(
                    f"{name} {size} is too small: it needs at least one image per "
                    f"class ({len(CLASSES)})"
                )
        self.save_hyperparameters()
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.classes = CLASSES
        self.train_set = None
        self.resume_epoch = 0  # set from a checkpoint by load_state_dict

    def prepare_data(self):
        if not self.hparams.synthetic:
            download_cifar10(self.hparams.data_dir)

    def setup(self, stage=None):
        if self.train_set is not None:
            return
        hp = self.hparams
        if hp.synthetic:
            self.train_images, self.train_labels = make_synthetic(hp.train_size or 5000, hp.seed)
            self.test_images, self.test_labels = make_synthetic(hp.test_size or 1000, hp.seed + 1)
            self.mean, self.std = channel_stats(self.train_images)
            self.source = "synthetic"
        else:
            data = load_cifar10(hp.data_dir)
            self.mean, self.std = cached_channel_stats(
                cifar_folder(hp.data_dir), data["train_images"]
            )
            self.train_images, self.train_labels = data["train_images"], data["train_labels"]
            self.test_images, self.test_labels = data["test_images"], data["test_labels"]
            if hp.train_size is not None:
                keep = balanced_subset(self.train_labels, hp.train_size, hp.seed, "--train-size")
                self.train_images = self.train_images[keep]
                self.train_labels = self.train_labels[keep]
            if hp.test_size is not None:
                keep = np.sort(
                    balanced_subset(self.test_labels, hp.test_size, hp.seed, "--test-size")
                )
                self.test_images, self.test_labels = self.test_images[keep], self.test_labels[keep]
            self.source = data["source"]
        self.train_set = ImageArrayDataset(
            self.train_images,
            self.train_labels,
            train_transforms(self.mean, self.std, cutout=hp.cutout),
        )
        self.test_set = ImageArrayDataset(
            self.test_images, self.test_labels, eval_transforms(self.mean, self.std)
        )

    def _loader(self, dataset, shuffle, shard=True):
        epoch = max(self.resume_epoch, self._next_epoch())
        replicas, rank = self._processes() if shard else (1, 0)
        batch_size = self.hparams.batch_size
        if self.hparams.augment_on == "device":  # shuffled = augmented
            return self._device_batches(dataset, shuffle, epoch, replicas, rank)
        if shuffle:  # full global batches only (EpochSampler drops the partial one)
            sampler = EpochSampler(
                len(dataset), self.hparams.seed, epoch, replicas, rank, batch_size
            )
        elif replicas > 1:  # each process evaluates its own part, none twice (no padding repeats)
            sampler = UnrepeatedDistributedSampler(dataset, replicas, rank, shuffle=False)
        else:
            sampler = None
        return DataLoader(
            dataset,
            batch_size=per_process_batch(batch_size, replicas),
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _processes(self):
        """(number of processes, this one's rank) of the Trainer's DDP run."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _next_epoch(self):
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_progress.current.processed

    # A resumed session's first training iterator, whose workers draw ahead, is made before
    # Lightning restores its epoch count and calls set_epoch (OneCycle's step count needs the loader
    # first), so the checkpoint says it.
    def state_dict(self):
        return {"next_epoch": self._next_epoch()}

    def load_state_dict(self, state_dict):
        self.resume_epoch = state_dict["next_epoch"]

    def _device_batches(self, dataset, train, epoch, replicas, rank):
        # Outside a Trainer (the LR range test) the batches go where find_lr puts the model.
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        hp = self.hparams
        return DeviceBatches(
            dataset.images,
            dataset.labels,
            self.mean,
            self.std,
            hp.batch_size,
            normalize=model.to_input,
            device=device,
            train=train,
            cutout=hp.cutout,
            seed=hp.seed,
            epoch=epoch,
            num_replicas=replicas,
            rank=rank,
        )

    def train_dataloader(self):
        if len(self.train_set) < self.hparams.batch_size:  # the partial batch is dropped: none left
            raise ValueError(
                f"--batch-size {self.hparams.batch_size} is larger than the training "
                f"set ({len(self.train_set)} images): choose a batch of at most "
                f"{len(self.train_set)}"
            )
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.test_set, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self):
        """The whole test split in one process, also under DDP (for the run folder's plots)."""
        return self._loader(self.test_set, shuffle=False, shard=False)
