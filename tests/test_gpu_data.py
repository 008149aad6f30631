"""The device-resident data path draws the same augmentations as the albumentations path.

Every sample of a coordinate-coded image is decoded back to the crop offset, flip and cutout hole
that made it, and checked to be exactly the reflect-padded crop that those parameters describe; the
parameters' distributions are then compared with the expected uniform ones and with each other
(chi-square, fixed seeds, so the outcome is fixed too).
"""

import numpy as np
import pytest
import torch
from scipy import stats

from data import CIFAR10DataModule, make_synthetic
from model import to_input
from plumbing.gpu_data import DeviceBatches, per_process_batch
from utils import eval_transforms, train_transforms

SAMPLES = 3000
PAD, HOLE = 4, 8
# Far from the coded image's colours: a cutout hole (filled with round(255 * mean)) is unmistakable.
MEAN, STD = (0.1, 0.1, 0.9), (0.25, 0.2, 0.3)
FILL = np.array([round(255 * m) for m in MEAN], dtype=np.uint8)
P_MIN = 1e-3


def coordinate_image():
    """Red codes the row, green the column (40 + 5 * index), blue is constant: every pixel tells
    where it came from."""
    rows, cols = np.mgrid[0:32, 0:32]
    return np.stack([40 + 5 * rows, 40 + 5 * cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def to_uint8(normalised):
    """Normalised NCHW float tensor -> uint8 NHWC array; exact, since both paths normalise integer
    pixel values."""
    scale, offset = (255 * np.array(STD))[:, None, None], (255 * np.array(MEAN))[:, None, None]
    pixels = normalised.numpy() * scale + offset
    assert np.abs(pixels - pixels.round()).max() < 1e-3, "not (x - 255 mean) / (255 std)"
    return pixels.round().astype(np.uint8).transpose(0, 2, 3, 1)


def albumentations_samples(cutout):
    transform = train_transforms(MEAN, STD, cutout=cutout, pad=PAD)
    transform.set_random_seed(0)
    image = coordinate_image()
    return to_uint8(torch.stack([transform(image=image)["image"] for _ in range(SAMPLES)]))


def device_samples(cutout):
    images = np.repeat(coordinate_image()[None], SAMPLES, axis=0)
    batches = DeviceBatches(
        images,
        np.zeros(SAMPLES),
        MEAN,
        STD,
        SAMPLES,
        to_input,
        train=True,
        cutout=cutout,
        pad=PAD,
        seed=0,
    )
    ((batch, _),) = list(batches)
    return to_uint8(batch)


# Which row (column) of the image each position of the reflect-101-padded image shows.
PADDED_INDEX = np.pad(np.arange(32), PAD, mode="reflect")
OFFSETS = np.arange(2 * PAD + 1)
# the source index of each output position, per offset
WINDOWS = np.stack([PADDED_INDEX[d : d + 32] for d in OFFSETS])


def decode(batch):
    """Per sample: crop offsets dy, dx (0..2*PAD), flip, cutout corner (top, left; -1 without a
    hole), and whether the sample is exactly the reflect-padded crop those parameters describe
    (outside the hole)."""
    hole = np.all(batch == FILL, axis=-1)  # (N, 32, 32)
    # every row and column keeps at least 24 pixels outside the hole to read its source from
    first_col = np.argmax(~hole, axis=2)[..., None]
    first_row = np.argmax(~hole, axis=1)[:, None, :]
    rows = (np.take_along_axis(batch[..., 0], first_col, axis=2)[..., 0].astype(int) - 40) // 5
    cols = (np.take_along_axis(batch[..., 1], first_row, axis=1)[:, 0].astype(int) - 40) // 5
    row_match = (rows[:, None] == WINDOWS[None]).all(-1)  # (N, 9)
    candidates = np.concatenate([WINDOWS, WINDOWS[:, ::-1]])  # 9 unflipped, then 9 flipped
    col_match = (cols[:, None] == candidates[None]).all(-1)  # (N, 18)
    one_each = (row_match.sum(1) == 1).all() and (col_match.sum(1) == 1).all()
    assert one_each, "a sample is no reflect-padded crop"
    dy, col_choice = row_match.argmax(1), col_match.argmax(1)
    dx, flipped = col_choice % len(OFFSETS), col_choice >= len(OFFSETS)
    has_hole = hole.any((1, 2))
    top = np.where(has_hole, hole.any(2).argmax(1), -1)
    left = np.where(has_hole, hole.any(1).argmax(1), -1)
    ys, xs = np.arange(32)[None, :, None], np.arange(32)[None, None, :]
    square = (
        (ys >= top[:, None, None])
        & (ys < top[:, None, None] + HOLE)
        & (xs >= left[:, None, None])
        & (xs < left[:, None, None] + HOLE)
        & has_hole[:, None, None]
    )
    expected = coordinate_image()[WINDOWS[dy][:, :, None], candidates[col_choice][:, None, :]]
    exact = (hole == square).all((1, 2)) & ((batch == expected).all(-1) | square).all((1, 2))
    return {"dy": dy, "dx": dx, "flipped": flipped, "top": top, "left": left, "exact": exact}


@pytest.fixture(scope="module")
def decoded():
    """{path: {"cutout": parameters, "plain": parameters}} for both paths, sampled once."""
    return {
        name: {"cutout": decode(make(HOLE)), "plain": decode(make(0))}
        for name, make in (("albumentations", albumentations_samples), ("device", device_samples))
    }


PATHS = ("albumentations", "device")


@pytest.mark.parametrize("path", PATHS)
def test_every_sample_is_an_exact_reflect_padded_crop(decoded, path):
    for kind in ("plain", "cutout"):
        assert decoded[path][kind]["exact"].all(), (path, kind)


@pytest.mark.parametrize("path", PATHS)
def test_crop_offsets_are_uniform_over_the_same_range(decoded, path):
    for key in ("dy", "dx"):
        counts = np.bincount(decoded[path]["plain"][key])
        assert len(counts) == 2 * PAD + 1 and counts.min() > 0, f"{path}: offsets {counts}"
        assert stats.chisquare(counts).pvalue > P_MIN, f"{path}: offsets not uniform: {counts}"


@pytest.mark.parametrize("path", PATHS)
def test_flip_rate_is_one_half(decoded, path):
    flips = int(decoded[path]["plain"]["flipped"].sum())
    assert stats.binomtest(flips, SAMPLES, 0.5).pvalue > P_MIN, f"{path}: {flips} flips"


@pytest.mark.parametrize("path", PATHS)
def test_cutout_is_one_whole_hole_uniform_over_positions_and_filled_with_the_mean(decoded, path):
    params = decoded[path]["cutout"]
    assert (params["top"] >= 0).all(), f"{path}: a hole missing (or not filled with the mean)"
    assert (decoded[path]["plain"]["top"] == -1).all(), f"{path}: a hole although cutout=0"
    for key in ("top", "left"):
        counts = np.bincount(params[key])
        assert len(counts) == 32 - HOLE + 1 and counts.min() > 0, f"{path}: hole at {counts}"
        assert stats.chisquare(counts).pvalue > P_MIN, f"{path}: hole not uniform: {counts}"


def test_both_paths_draw_from_the_same_distribution(decoded):
    for kind, key in (
        ("plain", "dy"),
        ("plain", "dx"),
        ("plain", "flipped"),
        ("cutout", "top"),
        ("cutout", "left"),
        ("cutout", "dy"),
        ("cutout", "flipped"),
    ):
        table = [np.bincount(decoded[path][kind][key].astype(int)) for path in PATHS]
        assert stats.chi2_contingency(table).pvalue > P_MIN, (kind, key, table)


def test_evaluation_batches_equal_the_albumentations_eval_transform_bit_for_bit():
    images, labels = make_synthetic(50, seed=4)
    batches = list(DeviceBatches(images, labels, MEAN, STD, 16, to_input))
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    transform = eval_transforms(MEAN, STD)
    reference = torch.stack([transform(image=image)["image"] for image in images])
    assert torch.equal(torch.cat([b[0] for b in batches]), reference)
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.as_tensor(labels))


def test_datamodule_device_path_serves_each_image_once_per_epoch_in_a_new_order():
    dm = CIFAR10DataModule(
        synthetic=True, train_size=100, test_size=30, batch_size=32, augment_on="device", seed=1
    )
    dm.setup()
    loader = dm.train_dataloader()
    epochs = [list(loader) for _ in range(2)]
    # the partial batch is dropped
    assert len(loader) == 3 and [len(b[1]) for b in epochs[0]] == [32, 32, 32]
    images, labels = epochs[0][0]
    assert images.dtype == torch.float32 and images.shape == (32, 3, 32, 32)
    assert labels.dtype == torch.int64
    counts = np.bincount(dm.train_labels, minlength=10)
    for epoch in epochs:  # 96 of the 100 images, none twice
        served = np.bincount(torch.cat([b[1] for b in epoch]).numpy(), minlength=10)
        assert served.sum() == 96 and (served <= counts).all()
    assert not torch.equal(epochs[0][0][1], epochs[1][0][1])
    test_labels = torch.cat([b[1] for b in dm.test_dataloader()])
    assert torch.equal(test_labels, torch.as_tensor(dm.test_labels))  # data-set order kept


def test_unknown_augment_on_is_a_value_error():
    with pytest.raises(ValueError, match="unknown augment_on 'gpu': choose one of loader, device"):
        CIFAR10DataModule(synthetic=True, augment_on="gpu")


def test_the_global_batch_splits_evenly_across_processes():
    assert per_process_batch(512, 4) == 128 and per_process_batch(7, 1) == 7
    message = "--batch-size 25 is the global batch and must split evenly between the 2 processes"
    with pytest.raises(ValueError, match=message):
        per_process_batch(25, 2)
    images, labels = make_synthetic(30, seed=0)
    with pytest.raises(ValueError, match=message):
        DeviceBatches(images, labels, MEAN, STD, 25, to_input, num_replicas=2)
