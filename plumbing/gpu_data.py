"""The GPU-resident data path: the whole uint8 data set lives on the training device and each batch is augmented
there with a few batched tensor ops, with no DataLoader workers.

The augmentations are those of `data.train_transforms` (reflect-pad 4 + random 32x32 crop, horizontal flip, one
8x8 cutout hole filled with the dataset mean, normalise), drawn from the same distributions; tests/test_gpu_data.py
checks that statistically against the albumentations path. Written by hand because albumentations works on one
NumPy image at a time on the CPU, which cannot feed a GPU training a ResNet-9 at thousands of images per second.
On a CPU-only machine the same code runs on CPU tensors (that is how the tests run it).
"""
import math

import numpy as np
import torch


def reflect_index(index, size):
    """Indices past either border mirrored back inside, without repeating the edge (OpenCV's BORDER_REFLECT_101,
    NumPy's mode="reflect"): -1 -> 1, size -> size - 2. Valid for overshoots shorter than `size`."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def alternating_flip_base(size, seed):
    """Alternating flips (airbench): image i is mirrored in even epochs where this is True and in odd epochs where
    it is False, so any two consecutive epochs show every image once each way. Drawn from the seed alone."""
    return np.random.default_rng([seed, ALT_FLIP_STREAM]).random(size) < 0.5


ALT_FLIP_STREAM = 0xF11B  # keeps the alternating-flip draw apart from every (seed, epoch) stream


def crop_flip(images, pad, generator, flip=None):
    """Random `pad`-pixel translation of uint8 NCHW images (a crop of the reflect-padded image) and a horizontal
    flip with probability 1/2 (or where the boolean `flip` says), as one gather: the padding and the flip live in the
    index arithmetic."""
    n, _, height, width = images.shape
    device = images.device
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
    if flip is None:
        flip = torch.rand((n, 1), device=device, generator=generator) < 0.5
    flip = flip.view(n, 1)
    rows = reflect_index(dy - pad + torch.arange(height, device=device), height)          # (n, H)
    cols = reflect_index(dx - pad + torch.arange(width, device=device), width)            # (n, W)
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
    return images[batch, channel, rows.view(n, 1, height, 1), cols.view(n, 1, 1, width)]


def cutout(images, size, fill, generator):
    """One `size` x `size` hole per image, placed uniformly so that it lies wholly inside (as CoarseDropout does),
    filled with `fill` (a C x 1 x 1 tensor of the images' dtype)."""
    n, _, height, width = images.shape
    device = images.device
    top = torch.randint(0, height - size + 1, (n, 1, 1, 1), device=device, generator=generator)
    left = torch.randint(0, width - size + 1, (n, 1, 1, 1), device=device, generator=generator)
    ys = torch.arange(height, device=device).view(1, 1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, 1, width)
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return torch.where(hole, fill, images)


def rank_slice(length, num_replicas, rank):
    """The part of `length` items that process `rank` of `num_replicas` takes: nearly equal consecutive parts, as
    np.array_split cuts them (the first length % num_replicas parts one item longer)."""
    size, extra = divmod(length, num_replicas)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


class DeviceBatches:
    """Batches of (normalised float32 NCHW images, int64 labels) from uint8 NHWC arrays copied once to `device`.

    `train=True`: a fresh permutation each pass, plus crop/flip/cutout, and the last partial batch dropped (every
    training step has one shape: one cuDNN autotuning, no recompiling); otherwise data-set order, no augmentation,
    every image. Pass k (counted from `epoch`) draws its order and augmentations from (seed, epoch + k) alone, so a
    resumed run replays its epochs exactly (as data.EpochSampler). `alt_flip`: alternating flips instead of random
    ones (alternating_flip_base).

    Under DDP each of the `num_replicas` processes holds the whole data set on its own device. In training, every
    process draws the same permutation and augments each whole global batch of `batch_size` images (a few index
    operations), then keeps its own `rank_slice` of it: the processes' slices together are exactly the one-device
    batch, images and augmentations alike. In evaluation each process takes its own consecutive part of the data.
    """

    def __init__(self, images, labels, mean, std, batch_size, device="cpu", train=False, cutout=8, pad=4, seed=0,
                 channels_last=True, epoch=0, alt_flip=False, num_replicas=1, rank=0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of the {num_replicas} processes")
        if batch_size % num_replicas:
            raise ValueError(f"the global batch of {batch_size} does not split evenly between {num_replicas} processes")
        device = torch.device(device)
        self.images = torch.as_tensor(images).to(device).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
        # Normalise in the 0..255 scale, exactly as A.Normalize(max_pixel_value=255) does.
        self.offset = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.scale = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.fill = torch.tensor([round(m * 255) for m in mean], dtype=torch.uint8, device=device).view(3, 1, 1)
        self.batch_size, self.train, self.cutout, self.pad = batch_size, train, cutout, pad
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.seed, self.epoch = seed, epoch
        self.num_replicas, self.rank, self.local_batch = num_replicas, rank, batch_size // num_replicas
        self.generator = torch.Generator(device=device)
        self.flip_base = (torch.as_tensor(alternating_flip_base(len(self.labels), seed), device=device) if alt_flip
                          else None)

    def __len__(self):
        if self.train:  # one slice of every full global batch
            return len(self.labels) // self.batch_size
        return math.ceil(len(range(len(self.labels))[self._eval_part()]) / self.local_batch)

    def _eval_part(self):
        return rank_slice(len(self.labels), self.num_replicas, self.rank)

    def augment(self, images, flip=None):
        images = crop_flip(images, self.pad, self.generator, flip)
        if self.cutout:
            images = cutout(images, self.cutout, self.fill, self.generator)
        return images

    def normalize(self, images):
        return ((images.float() - self.offset) / self.scale).contiguous(memory_format=self.memory_format)

    def __iter__(self):
        n = len(self.labels)
        device = self.labels.device
        seed_sequence = np.random.SeedSequence([self.seed, self.epoch])
        self.generator.manual_seed(int(seed_sequence.generate_state(1, np.uint64)[0] >> 1))
        odd = self.epoch % 2 == 1
        self.epoch += 1
        if not self.train:
            part = self._eval_part()
            for start in range(part.start, part.stop, self.local_batch):
                end = min(start + self.local_batch, part.stop)
                yield self.normalize(self.images[start:end]), self.labels[start:end]
            return
        order = torch.randperm(n, device=device, generator=self.generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            flip = None if self.flip_base is None else self.flip_base[index] ^ odd
            mine = rank_slice(len(index), self.num_replicas, self.rank)
            yield self.normalize(self.augment(self.images[index], flip)[mine]), self.labels[index[mine]]
