"""Recipes, their LR schedules, augmentation on the device through train.py (with flip TTA), and
bench.py."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import model
import recipes
import train
from data import CIFAR10DataModule, make_synthetic
from lit_classifier import LitClassifier
from lr_finder import find_lr
from plumbing import cli, hardware
from plumbing.gpu_data import DeviceBatches
from tests.conftest import lowest_loss_lr, parse_train_args
from tools import bench

QUIET = ["--enable-progress-bar", "false", "--num-workers", "0"]
STEPS_PER_EPOCH = 98  # 50,000 images at batch 512


def resolved(*argv):
    return parse_train_args(list(argv) + ["--out", "unused"])[0]


def test_without_flags_the_resnet9_gets_the_dawn_recipe_at_the_machines_batch_size():
    settings = resolved()
    dawn = recipes.RECIPES["dawn"]
    assert settings["recipe"] == "dawn"
    # a CPU trains 256 images per step by default (plumbing/hardware.py), the LR scaled to it
    batch = hardware.CPU_BATCH_SIZE if cli.on_cpu({}) else dawn["batch_size"]
    assert settings["batch_size"] == batch
    assert settings["lr"] == pytest.approx(recipes.scaled_lr(dawn, batch))
    same = [key for key in recipes.SETTINGS if key not in ("batch_size", "lr")]
    assert {key: settings[key] for key in same} == {key: dawn[key] for key in same}
    # on a GPU, and wherever --batch-size is given, the recipe's own
    settings = resolved("--accelerator", "gpu")
    assert {key: settings[key] for key in recipes.SETTINGS} == dawn
    assert resolved("--accelerator", "cpu", "--batch-size", "512")["lr"] == dawn["lr"]


def test_explicit_flags_override_single_recipe_values():
    settings = resolved("--recipe", "course", "--epochs", "3", "--logit-scale", "0.5", "--no-tta")
    recipe_values = [settings[key] for key in ("optimizer", "lr_find", "weight_decay")]
    assert recipe_values == ["adam", True, 1e-4]
    assert [settings[key] for key in ("epochs", "logit_scale", "tta")] == [3, 0.5, False]  # flags
    # an explicit LR replaces the range test, unless it is asked for too
    assert resolved("--recipe", "course", "--lr", "0.02")["lr_find"] is False
    assert resolved("--recipe", "course", "--lr", "0.02", "--lr-find")["lr_find"] is True


def test_another_batch_size_scales_the_lr_unless_it_is_given():
    assert resolved("--batch-size", "128")["lr"] == pytest.approx(0.4 * 128 / 512)
    assert resolved("--batch-size", "128", "--lr", "0.3")["lr"] == 0.3
    assert resolved("--model", "resnet18", "--batch-size", "1024")["lr"] == pytest.approx(0.8)


def test_each_model_defaults_to_its_own_recipe_and_a_recipe_can_take_another_model():
    settings = resolved("--model", "resnet18")
    assert (settings["recipe"], settings["epochs"]) == ("resnet18", 40)
    settings = resolved("--recipe", "dawn", "--model", "resnet18")
    assert [settings[key] for key in ("model", "epochs", "logit_scale")] == ["resnet18", 24, 0.125]


def test_unknown_recipe_and_missing_lr_are_clear_errors(tmp_path, capsys):
    assert train.main(["--recipe", "fastest", "--synthetic", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown recipe 'fastest': choose one of dawn, course")
    with pytest.raises(ValueError, match="course recipe takes its peak LR from the LR range test"):
        resolved("--recipe", "course", "--no-lr-find")


def test_cpu_training_gets_the_loader_path_without_workers_unless_told_otherwise():
    settings, trainer_flags = parse_train_args(["--out", "unused", "--accelerator", "cpu"])
    assert (settings["augment_on"], settings["num_workers"]) == ("loader", 0)
    assert trainer_flags["precision"] == hardware.fast_precision(cuda=False)  # bf16 where native
    settings, _ = parse_train_args(
        ["--out", "unused", "--accelerator", "cpu", "--num-workers", "1", "--augment-on", "device"]
    )
    assert (settings["augment_on"], settings["num_workers"]) == ("device", 1)


def one_cycle_lrs(recipe, epochs):
    settings = {
        key: value
        for key, value in recipes.RECIPES[recipe].items()
        if key
        in ("optimizer", "momentum", "weight_decay", "pct_start", "div_factor", "final_div_factor")
    }
    lit = LitClassifier(lr=0.4, **settings)
    lit.trainer = SimpleNamespace(estimated_stepping_batches=epochs * STEPS_PER_EPOCH)
    scheduler = lit.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(epochs * STEPS_PER_EPOCH):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return np.array(lrs)


@pytest.mark.parametrize("recipe, epochs, peak_epoch", [("dawn", 24, 5), ("resnet18", 40, 8)])
def test_schedule_is_linear_from_zero_to_the_peak_and_back_to_zero(recipe, epochs, peak_epoch):
    lrs = one_cycle_lrs(recipe, epochs)
    # dawn.py: PiecewiseLinear([0, 5, 24], [0, 0.4, 0]) in epochs, evaluated at every step
    page = np.interp(np.arange(len(lrs)) / STEPS_PER_EPOCH, [0, peak_epoch, epochs], [0, 0.4, 0])
    assert np.abs(lrs - page).max() < 0.4 * 0.01
    assert lrs.argmax() in (peak_epoch * STEPS_PER_EPOCH - 1, peak_epoch * STEPS_PER_EPOCH)
    assert lrs[0] < 1e-4 and lrs[-1] < 1e-3


def test_course_schedule_starts_at_a_hundredth_of_the_peak():
    lrs = one_cycle_lrs("course", 24)
    assert lrs[0] == pytest.approx(0.4 / 100) and lrs[-1] == pytest.approx(0.4 / 1e4, rel=0.5)
    assert lrs.argmax() in (5 * STEPS_PER_EPOCH - 1, 5 * STEPS_PER_EPOCH)


@pytest.fixture(scope="module")
def device_path_run(tmp_path_factory):
    out, results = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("results")
    argv = [
        "--synthetic",
        "--train-size",
        "100",
        "--test-size",
        "60",
        "--epochs",
        "2",
        "--batch-size",
        "25",
        "--lr",
        "0.2",
        "--augment-on",
        "device",
        "--seed",
        "5",
        "--out",
        str(out),
        "--results-dir",
        str(results),
    ] + QUIET
    assert train.main(argv) == 0
    return out, results


def test_device_path_run_reports_tta_separately_and_writes_a_results_record(device_path_run):
    out, results = device_path_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["augment_on"] == "device"
    assert summary["channels_last"] is hardware.fast_channels_last(cuda=False)
    assert summary["recipe"] == "dawn"
    assert 0 <= summary["test_acc"] <= 1 and 0 <= summary["test_acc_tta"] <= 1
    assert summary["wall_seconds"] > summary["train_seconds"] > 0
    (record,) = [json.loads(p.read_text()) for p in results.glob("*.json")]
    assert (
        record["kind"] == "time_to_accuracy"
        and record["seed"] == 5
        and record["data"] == "synthetic"
    )
    for key in (
        "device",
        "torch",
        "recipe",
        "epochs",
        "wall_seconds",
        "test_acc",
        "test_acc_tta",
        "augment_on",
        "channels_last",
    ):
        assert record[key] == summary.get(
            key, summary["versions"]["torch"] if key == "torch" else None
        ), key


def test_the_checkpoint_reproduces_both_accuracies(device_path_run):
    out, _ = device_path_run
    summary = json.loads((out / "summary.json").read_text())
    lit = LitClassifier.load_from_checkpoint(out / "last.ckpt", map_location="cpu").eval()
    dm = CIFAR10DataModule(
        synthetic=True, train_size=100, test_size=60, seed=5, batch_size=60, augment_on="device"
    )
    dm.setup()
    ((images, labels),) = list(dm.test_dataloader())
    with torch.no_grad():
        logits, mirrored = lit(images), lit(images.flip(3))
    assert float((logits.argmax(1) == labels).float().mean()) == pytest.approx(
        summary["test_acc"], abs=1e-6
    )
    tta = float(((logits + mirrored).argmax(1) == labels).float().mean())
    assert tta == pytest.approx(summary["test_acc_tta"], abs=1e-6)


def test_lr_range_test_runs_on_device_batches():
    images, labels = make_synthetic(64, seed=0)
    loader = DeviceBatches(
        images, labels, (0.5,) * 3, (0.25,) * 3, batch_size=16, normalize=model.to_input, train=True
    )
    # the loader is under test: the smallest network will do (seeded: a range test is a random walk)
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    suggested, figure = find_lr(tiny, loader, end_lr=1.0, num_iter=30, device="cpu")
    assert len(figure.axes[0].lines[0].get_xdata()) >= 5  # steps that drew batches
    assert suggested == pytest.approx(lowest_loss_lr(figure) / 10, rel=1e-9)


def test_lr_range_test_runs_in_the_given_precision_and_layout():
    images, labels = make_synthetic(32, seed=0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(
            torch.tensor(images).permute(0, 3, 1, 2).float() / 255, torch.tensor(labels)
        ),
        batch_size=8,
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    net(torch.zeros(1, 3, 32, 32))  # the lazy layer takes its shape
    seen = []

    def record(conv, inputs, output):
        seen.append((output.dtype, conv.weight.is_contiguous(memory_format=torch.channels_last)))

    net[0].register_forward_hook(record)  # deepcopy in find_lr copies the hook too
    find_lr(
        net,
        loader,
        num_iter=30,
        end_lr=1.0,
        device="cpu",
        precision="bf16-mixed",
        channels_last=True,
    )
    assert seen and set(seen) == {(torch.bfloat16, True)}
    seen.clear()
    find_lr(net, loader, num_iter=30, end_lr=1.0, device="cpu")  # the default: float32, NCHW
    assert seen and set(seen) == {(torch.float32, False)}
    assert net[0].weight.is_contiguous()  # the caller's network is left as it was


def test_bench_writes_both_throughputs_and_their_ratio(tmp_path):
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--batch-size",
                "4",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--rounds",
                "1",
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert (
        result["kind"] == "throughput"
        and result["device"].startswith("CPU")
        and result["batch_size"] == 4
    )
    assert result["pipeline_images_per_second"] > 0 and result["bare_images_per_second"] > 0
    assert result["ratio"] == pytest.approx(
        result["pipeline_images_per_second"] / result["bare_images_per_second"], rel=1e-2
    )  # both rounded
    assert result["versions"]["torch"] == torch.__version__ and len(result["load_before"]) == 3
