import json
import pickle

import numpy as np
import pytest
import torch

import data
import utils
from data import CIFAR10DataModule, balanced_subset, load_cifar10, make_synthetic, read_batch
from utils import cached_channel_stats, channel_stats, eval_transforms, train_transforms

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def test_synthetic_is_balanced_uint8_and_class_dependent():
    images, labels = make_synthetic(1000, seed=0)
    assert images.shape == (1000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [100] * 10
    # the colour of the shape differs by class: per-class mean colours are far apart
    class_means = np.stack([images[labels == c].reshape(-1, 3).mean(0) for c in range(10)])
    distances = np.linalg.norm(class_means[:, None] - class_means[None], axis=-1)
    assert distances[~np.eye(10, dtype=bool)].min() > 3
    again, _ = make_synthetic(1000, seed=0)
    assert np.array_equal(images, again)


def test_written_folder_reads_back(cifar_dir):
    loaded = load_cifar10(cifar_dir)
    images, labels = make_synthetic(600, seed=1)
    assert np.array_equal(loaded["train_images"], images)
    assert np.array_equal(loaded["train_labels"], labels)
    assert loaded["test_images"].shape == (200, 32, 32, 3)
    # the folder itself works as --data-dir too
    assert len(load_cifar10(cifar_dir / "cifar-10-batches-py")["test_labels"]) == 200


def test_channel_stats_match_numpy():
    images, _ = make_synthetic(300, seed=3)
    mean, std = channel_stats(images, chunk=64)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-8)


def test_stats_are_cached_and_recomputed_when_data_changes(tmp_path):
    images, _ = make_synthetic(100, seed=0)
    first = cached_channel_stats(tmp_path, images)
    cache = json.loads((tmp_path / utils.STATS_FILE).read_text())
    assert cache["mean"] == list(first[0])
    other = make_synthetic(100, seed=9)[0]
    second = cached_channel_stats(tmp_path, other)
    np.testing.assert_allclose(second[0], channel_stats(other)[0])
    recomputed = json.loads((tmp_path / utils.STATS_FILE).read_text())
    assert recomputed["fingerprint"] != cache["fingerprint"]


def test_train_transform_crops_flips_and_cuts_out():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    fill = np.round(np.array(MEAN) * 255)
    plain = eval_transforms(MEAN, STD)(image=image)["image"]
    transform = train_transforms(MEAN, STD, cutout=8)
    outputs = [transform(image=image)["image"] for _ in range(40)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outputs)
    assert len({o.numpy().tobytes() for o in outputs}) > 30  # random crops/flips/holes differ
    fill_normalised = torch.tensor((fill / 255 - MEAN) / STD, dtype=torch.float32).view(3, 1, 1)
    shifted = 0
    for out in outputs:
        # exactly one 8x8 square (at least) equals the mean colour: the cutout really cuts
        is_fill = torch.isclose(out, fill_normalised, atol=1e-4).all(0)
        assert is_fill.sum() >= 64
        rows, cols = torch.nonzero(is_fill, as_tuple=True)
        assert rows.max() - rows.min() >= 7 and cols.max() - cols.min() >= 7
        kept = ~is_fill
        shifted += not torch.equal(out[:, kept], plain[:, kept])
    assert shifted > 20  # most samples are cropped away from the centre (or flipped)


def test_horizontal_flip_happens_half_the_time():
    # no crop shift, no hole: only the flip is random
    transform = train_transforms(MEAN, STD, cutout=0, pad=0)
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = 255  # bright left half: after a flip the top-left pixel is dark
    flipped = sum(bool(transform(image=image)["image"][0, 0, 0] < 0) for _ in range(200))
    assert 60 < flipped < 140


def test_test_transform_is_deterministic_normalisation():
    image = make_synthetic(1, seed=0)[0][0]
    first = eval_transforms(MEAN, STD)(image=image)["image"]
    second = eval_transforms(MEAN, STD)(image=image)["image"]
    assert torch.equal(first, second)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    expected = (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)


def test_balanced_subset():
    labels = np.repeat(np.arange(10), 50)
    index = balanced_subset(labels, 105, seed=0)
    assert len(set(index)) == 105
    counts = np.bincount(labels[index])
    assert counts.max() - counts.min() == 1
    with pytest.raises(ValueError, match="--train-size 600 asks for 60 images"):
        balanced_subset(labels, 600, seed=0)
    with pytest.raises(ValueError, match="at least one image per class"):
        balanced_subset(labels, 5, seed=0)


def test_datamodule_synthetic_batches():
    dm = CIFAR10DataModule(
        synthetic=True, train_size=100, test_size=50, batch_size=16, num_workers=0
    )
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and labels.shape == (16,)
    assert len(dm.test_set) == 50 and dm.source == "synthetic"
    assert abs(float(images.mean())) < 0.5  # normalised with the data's own statistics


def test_datamodule_subsets_real_folder(cifar_dir):
    dm = CIFAR10DataModule(cifar_dir, synthetic=False, train_size=100, test_size=30, num_workers=0)
    dm.prepare_data()  # data present: no download attempted
    dm.setup()
    assert np.bincount(dm.train_labels).tolist() == [10] * 10
    assert len(dm.test_labels) == 30
    assert (cifar_dir / "cifar-10-batches-py" / utils.STATS_FILE).exists()


def test_missing_folder_without_network_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="could not be downloaded.*--data-dir.*--synthetic"):
        data.download_cifar10(tmp_path, url="http://127.0.0.1:9/cifar-10-python.tar.gz")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a pickle at all", "not a readable CIFAR-10 batch"),
        (pickle.dumps({"something": 1}), "expected a dict with 'data' and 'labels'"),
        (
            pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}),
            "expected uint8 \\(N, 3072\\)",
        ),
    ],
)
def test_malformed_batch_is_named(tmp_path, content, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_batch(path)
    assert str(path) in str(info.value)


def test_truncated_batch_is_named(cifar_dir, tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes((cifar_dir / "cifar-10-batches-py" / "test_batch").read_bytes()[:5000])
    with pytest.raises(ValueError, match="test_batch is not a readable CIFAR-10 batch"):
        read_batch(path)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="--batch-size"):
        CIFAR10DataModule(synthetic=True, batch_size=0)
    with pytest.raises(ValueError, match="--test-size 3"):
        CIFAR10DataModule(synthetic=True, test_size=3)
