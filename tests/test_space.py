"""The self-contained checkpoint and `app.py --export-space`: a Hugging Face Space folder that runs
on its own."""

import ast
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import gradio
import numpy as np
import pytest
import torch
import yaml
from packaging.requirements import Requirement

import app
import utils
from data import CLASSES, make_synthetic
from demo import serving, space
from lit_classifier import load_classifier
from plumbing.checkpointing import SERVING
from tests.test_app import free_port

LEFT_OUT = {"pytorch_lightning", "lightning", "lightning_fabric", "albumentations", "torchmetrics"}


def export(*argv):
    return app.main(["--export-space", *map(str, argv)])


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("export") / "space"
    assert app.main(["--checkpoint", str(tiny_run / "last.ckpt"), "--export-space", str(dest)]) == 0
    return dest


def test_the_checkpoint_records_what_serving_needs(tiny_run):
    # plain containers only
    record = torch.load(tiny_run / "last.ckpt", weights_only=True)[SERVING]
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert record["test_acc"] == summary["test_acc"]
    assert record["test_acc_tta"] == summary["test_acc_tta"]
    assert record["classes"] == CLASSES and len(record["mean"]) == len(record["std"]) == 3
    assert (record["model_name"], record["recipe"], record["epochs"], record["data"]) == (
        "custom_resnet",
        "dawn",
        1,
        "synthetic",
    )
    assert record["device"] == summary["device"]
    assert 0 < record["train_seconds"] <= summary["train_seconds"]
    assert load_classifier(tiny_run / "last.ckpt").hparams.model_name == "custom_resnet"


def test_export_writes_a_complete_space(exported):
    names = {str(path.relative_to(exported)) for path in exported.rglob("*") if path.is_file()}
    assert {
        "app.py",
        "model.py",
        "gradcam.py",
        "demo/__init__.py",
        "demo/serving.py",
        "model.safetensors",
        "serving.json",
        "README.md",
        "requirements.txt",
    } <= names
    assert len([name for name in names if name.startswith("examples/")]) == space.EXAMPLES
    assert space.folder_bytes(exported) < 60e6
    readme = (exported / "README.md").read_text()
    front = yaml.safe_load(readme.split("---\n")[1])
    requirements = [
        line
        for line in (exported / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    options = [line for line in requirements if line.startswith("-")]
    pins = {
        Requirement(line).name: str(Requirement(line).specifier)
        for line in requirements
        if line not in options
    }
    assert options == [f"--extra-index-url {space.CPU_WHEELS}"]
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["title"]
    assert front["sdk_version"] == gradio.__version__
    assert pins["gradio"] == f"=={gradio.__version__}"
    assert front["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert set(pins) == set(space.REQUIREMENTS)
    assert all(pin.startswith("==") for pin in pins.values())
    assert pins["torch"].endswith("+cpu") and not LEFT_OUT & set(pins)
    record = json.loads((exported / "serving.json").read_text())
    for text in (
        "6,573,130 parameters",
        f"{record['test_acc']:.2%} on 60 test images",
        "| Data | synthetic |",
        "| Recipe | dawn (",
        "| Epochs | 1 |",
        "| Trained on | CPU",
        "float16 safetensors",
    ):
        assert text in readme, text


def test_exported_weights_give_the_checkpoints_top_class(exported, tiny_run):
    images = make_synthetic(100, seed=7)[0]  # the run's own kind of test images, 100 of them
    record = torch.load(tiny_run / "last.ckpt", weights_only=True)[SERVING]
    model = load_classifier(tiny_run / "last.ckpt").model
    checkpoint = utils.predict_images(model, images, record["mean"], record["std"])
    demo = serving.load_exported(exported)
    assert demo.record["weights"] == "float16" and demo.mean == tuple(record["mean"])
    exported_probs = utils.predict_images(demo.model, images, demo.mean, demo.std)
    np.testing.assert_array_equal(exported_probs.argmax(1), checkpoint.argmax(1))


def test_the_exported_app_runs_without_the_project(exported, tmp_path):
    from gradio_client import Client, handle_file

    folder = shutil.copytree(exported, tmp_path / "space")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # What the Space imports (no Lightning, no albumentations, not the project), then
    # `python app.py` in the same process: one start-up of torch and Gradio instead of two.
    probe = (
        "import runpy, sys, app\nfrom demo.serving import build_ui, load_exported\n"
        "build_ui(load_exported(app.HERE))\n"
        "try:\n    import train\nexcept ImportError:\n    print('no project')\n"
        "print(sorted({name.split('.')[0] for name in sys.modules}), flush=True)\n"
        "runpy.run_path('app.py', run_name='__main__')"
    )
    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", probe],
            cwd=folder,
            env={**env, "GRADIO_SERVER_PORT": str(port)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            exited = process.poll()
            assert exited is None, f"app.py exited with {exited}:\n{log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                tail = log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"no answer on {url}:\n{tail}"
                time.sleep(0.5)
        lines = log.read_text().splitlines()
        assert "no project" in lines
        modules = ast.literal_eval(next(line for line in lines if line.startswith("['")))
        assert "gradio" in modules and "torch" in modules and not LEFT_OUT & set(modules)
        client = Client(url, verbose=False)
        cat = handle_file(str(folder / "examples" / "cat.png"))
        label, overlay, _, status = client.predict(cat, "layer2", 0.5, api_name="/analyse")
        assert label["label"] in CLASSES and f"**{label['label']}**" in status
        assert "cat.png: 32x32 RGB PNG" in status
        assert overlay is not None
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_export_of_the_checkpoint_alone(tiny_run, tmp_path):
    # no run folder, no data: float16 is checked on generated images
    shutil.copy(tiny_run / "last.ckpt", tmp_path / "last.ckpt")
    assert export(tmp_path / "space", "--checkpoint", tmp_path / "last.ckpt") == 0
    assert not (tmp_path / "space" / "examples").exists()
    assert f"of {app.GENERATED} generated images" in (tmp_path / "space" / "README.md").read_text()


def test_bad_exports_get_one_error_line_and_leave_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    ckpt = tiny_run / "last.ckpt"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me\n")
    (tmp_path / "a_file").write_text("")
    torch.save({"state_dict": {"weight": torch.zeros(3)}, "epoch": 3}, tmp_path / "other.ckpt")
    unserved = torch.load(ckpt, weights_only=True)
    del unserved[SERVING]
    torch.save(unserved, tmp_path / "notebook.ckpt")  # as a notebook's, and no data beside it
    cases = [
        (tmp_path / "full", ckpt, "exists and is not empty"),
        (tmp_path / "a_file" / "space", ckpt, "cannot be written"),
        (tmp_path / "new1", tmp_path / "other.ckpt", "is not a checkpoint written by train.py"),
        (tmp_path / "new2", tmp_path / "notebook.ckpt", "has no serving record"),
    ]
    for dest, checkpoint, message in cases:
        assert export(dest, "--checkpoint", checkpoint) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert [path.name for path in (tmp_path / "full").iterdir()] == ["notes.txt"]
    monkeypatch.setattr(space, "MAX_BYTES", 1_000_000)  # fails after everything was written
    assert export(tmp_path / "new3", "--checkpoint", ckpt) == 2
    assert "more than 1 MB" in capsys.readouterr().err
    # no new* folders, no temporary ones
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "a_file",
        "full",
        "notebook.ckpt",
        "other.ckpt",
    ]
