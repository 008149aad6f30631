"""The device-resident data path: the whole uint8 data set lives on the training device and each
batch is augmented there with a few batched tensor ops, with no DataLoader workers.

The augmentations are those of `utils.train_transforms` (reflect-pad 4 + random 32x32 crop,
horizontal flip, one 8x8 cutout hole filled with the dataset mean), drawn from the same
distributions; tests/test_gpu_data.py checks that statistically against the albumentations path.
Written by hand because albumentations works on one NumPy image at a time on the CPU, which cannot
feed a GPU training a ResNet-9 at thousands of images per second. On a CPU-only machine the same
code runs on CPU tensors (that is how the tests run it).
"""

import math

import numpy as np
import torch


def per_process_batch(batch_size, processes):
    """Each of the `processes` takes an equal share of every global batch of `batch_size` images,
    so a recipe's batch (and learning rate) means the same on any number of devices."""
    if batch_size % processes:
        raise ValueError(
            f"--batch-size {batch_size} is the global batch and must split evenly "
            f"between the {processes} processes (devices x nodes)"
        )
    return batch_size // processes


def reflect_index(index, size):
    """Indices past either border mirrored back inside, without repeating the edge (OpenCV's
    BORDER_REFLECT_101, NumPy's mode="reflect"): -1 -> 1, size -> size - 2. Valid for overshoots
    shorter than `size`."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def crop_flip(images, pad, generator):
    """Random `pad`-pixel translation of uint8 NCHW images (a crop of the reflect-padded image) and
    a horizontal flip with probability 1/2, as one gather: the padding and the flip live in the
    index arithmetic."""
    n, _, height, width = images.shape
    device = images.device
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
    flip = torch.rand((n, 1), device=device, generator=generator) < 0.5
    rows = reflect_index(dy - pad + torch.arange(height, device=device), height)  # (n, H)
    cols = reflect_index(dx - pad + torch.arange(width, device=device), width)  # (n, W)
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
    return images[batch, channel, rows.view(n, 1, height, 1), cols.view(n, 1, 1, width)]


def cutout(images, size, fill, generator):
    """One `size` x `size` hole per image, placed uniformly so that it lies wholly inside (as
    CoarseDropout does), filled with `fill` (a C x 1 x 1 tensor of the images' dtype)."""
    n, _, height, width = images.shape
    device = images.device
    top = torch.randint(0, height - size + 1, (n, 1, 1, 1), device=device, generator=generator)
    left = torch.randint(0, width - size + 1, (n, 1, 1, 1), device=device, generator=generator)
    ys = torch.arange(height, device=device).view(1, 1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, 1, width)
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return torch.where(hole, fill, images)


def rank_slice(length, num_replicas, rank):
    """The part of `length` items that process `rank` of `num_replicas` takes: nearly equal
    consecutive parts, as np.array_split cuts them (the first length % num_replicas one longer)."""
    size, extra = divmod(length, num_replicas)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


class DeviceBatches:
    """Batches of (normalised float32 NCHW images, int64 labels) from uint8 NHWC arrays copied once
    to `device`.

    `normalize` is model.to_input, (uint8 NHWC images, mean, std) -> network input: passed in, as
    plumbing imports no lesson module, so both data paths normalise with the same arithmetic.

    `train=True`: a fresh permutation each pass, plus crop/flip/cutout, and the last partial batch
    dropped (every training step has one shape: one cuDNN autotuning, no recompiling); otherwise
    data-set order, no augmentation, every image. Pass k (counted from `epoch`) draws its order and
    augmentations from (seed, epoch + k) alone, so a resumed run replays its epochs exactly (as
    data.EpochSampler).

    Under DDP each of the `num_replicas` processes holds the whole data set on its own device. In
    training, every process draws the same permutation and augments each whole global batch of
    `batch_size` images (a few index operations), then keeps its own `rank_slice` of it: the
    processes' slices together are exactly the one-device batch, images and augmentations alike. In
    evaluation each process takes its own consecutive part of the data.
    """

    def __init__(
        self,
        images,
        labels,
        mean,
        std,
        batch_size,
        normalize,
        device="cpu",
        train=False,
        cutout=8,
        pad=4,
        seed=0,
        epoch=0,
        num_replicas=1,
        rank=0,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of the {num_replicas} processes")
        self.local_batch = per_process_batch(batch_size, num_replicas)
        device = torch.device(device)
        # uint8 NCHW: the crop, flip and cutout index rows and columns of each channel
        self.images = torch.as_tensor(images).to(device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
        self.normalize = normalize
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)  # on the device once
        self.std = torch.tensor(std, dtype=torch.float32, device=device)
        fill = [round(m * 255) for m in mean]
        self.fill = torch.tensor(fill, dtype=torch.uint8, device=device).view(3, 1, 1)
        self.batch_size, self.train, self.cutout, self.pad = batch_size, train, cutout, pad
        self.seed, self.epoch = seed, epoch
        self.num_replicas, self.rank = num_replicas, rank
        self.generator = torch.Generator(device=device)

    def __len__(self):
        if self.train:  # one slice of every full global batch
            return len(self.labels) // self.batch_size
        return math.ceil(len(range(len(self.labels))[self._eval_part()]) / self.local_batch)

    def _eval_part(self):
        return rank_slice(len(self.labels), self.num_replicas, self.rank)

    def augment(self, images):
        images = crop_flip(images, self.pad, self.generator)
        if self.cutout:
            images = cutout(images, self.cutout, self.fill, self.generator)
        return images

    def inputs(self, images):
        """uint8 NCHW -> the normalised float batch (to_input takes NHWC: a permuted view)."""
        return self.normalize(images.permute(0, 2, 3, 1), self.mean, self.std)

    def __iter__(self):
        n = len(self.labels)
        device = self.labels.device
        seed_sequence = np.random.SeedSequence([self.seed, self.epoch])
        self.generator.manual_seed(int(seed_sequence.generate_state(1, np.uint64)[0] >> 1))
        self.epoch += 1
        if not self.train:
            part = self._eval_part()
            for start in range(part.start, part.stop, self.local_batch):
                end = min(start + self.local_batch, part.stop)
                yield self.inputs(self.images[start:end]), self.labels[start:end]
            return
        order = torch.randperm(n, device=device, generator=self.generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            mine = rank_slice(len(index), self.num_replicas, self.rank)
            yield self.inputs(self.augment(self.images[index])[mine]), self.labels[index[mine]]
