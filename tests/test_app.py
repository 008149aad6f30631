import json
import shutil
import socket
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import app
from data import CLASSES, CIFAR10DataModule
from demo import serving
from plumbing.checkpointing import SERVING


@pytest.fixture(scope="module")
def demo(tiny_run):
    return app.load_demo(tiny_run / "last.ckpt")


@pytest.fixture(scope="module")
def photo(demo, tmp_path_factory):
    """A 'photo' that is neither square nor 32x32: a test image enlarged to 300x200."""
    path = tmp_path_factory.mktemp("uploads") / "photo.png"
    Image.fromarray(demo.test_images[0]).resize((300, 200), Image.Resampling.BICUBIC).save(path)
    return path


def png_claiming_size(path, width, height):
    """A PNG whose header claims width x height: enough to test the size checks, nothing decoded."""
    buffer = path.with_suffix(".tmp.png")
    Image.new("RGB", (1, 1)).save(buffer)
    data = bytearray(buffer.read_bytes())
    # the IHDR payload starts at byte 16, its CRC follows its 13 bytes
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, photo):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "empty.png").write_bytes(b"")
    Image.new("RGB", (1, 1), "red").save(folder / "dot.png")
    # header intact, pixel data cut off
    (folder / "corrupt.png").write_bytes(photo.read_bytes()[:200])
    png_claiming_size(folder / "huge.png", 9000, 9000)
    return folder


def test_load_demo_uses_the_runs_own_data(demo, tiny_run):
    dm = CIFAR10DataModule(synthetic=True, train_size=100, test_size=60, seed=0, num_workers=0)
    dm.setup()
    assert demo.model_name == "custom_resnet" and not demo.model.training
    assert demo.mean == dm.mean and demo.std == dm.std
    np.testing.assert_array_equal(demo.test_images, dm.test_images)
    assert "synthetic" in demo.data_note and demo.record["test_images"] == 60


def test_missing_or_broken_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*train.py"):
        app.load_demo(tmp_path / "last.ckpt")
    (tmp_path / "last.ckpt").write_bytes(b"garbage")
    assert app.main(["--checkpoint", str(tmp_path / "last.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a readable checkpoint" in err
    assert "Traceback" not in err


def test_the_checkpoint_alone_serves_uploads(tiny_run, tmp_path, photo):
    # the run folder is gone: no summary.json, no data
    shutil.copy(tiny_run / "last.ckpt", tmp_path / "last.ckpt")
    alone = app.load_demo(tmp_path / "last.ckpt")
    dm = CIFAR10DataModule(synthetic=True, train_size=100, test_size=60, seed=0, num_workers=0)
    dm.setup()
    # from the checkpoint's serving record
    assert (alone.mean, alone.std, alone.classes) == (dm.mean, dm.std, CLASSES)
    assert alone.test_images is None and "stored in the checkpoint" in alone.data_note
    assert "no readable summary.json" in alone.data_note and "--data-dir" in alone.data_note
    assert app.mistakes_gallery(alone, 4) == ([], alone.data_note)
    probs, *_ = serving.analyse_upload(alone, photo, "layer2")
    with_run = app.load_demo(tiny_run / "last.ckpt")
    assert probs == serving.analyse_upload(with_run, photo, "layer2")[0]
    assert "% test accuracy after 1 epochs" in serving.title(alone)


def test_a_checkpoint_without_serving_record_takes_the_runs_data(tiny_run, tmp_path, cifar_dir):
    checkpoint = torch.load(tiny_run / "last.ckpt", weights_only=True)
    del checkpoint[SERVING]  # as Lightning's ModelCheckpoint alone writes it (the notebooks)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match="serving record .*no readable summary.json.*--data-dir"):
        app.load_demo(tmp_path / "last.ckpt")
    missing = tmp_path / "x"
    (tmp_path / "summary.json").write_text(json.dumps({"settings": {"data_dir": str(missing)}}))
    with pytest.raises(ValueError, match="no 'cifar-10-batches-py' folder"):
        app.load_demo(tmp_path / "last.ckpt")
    moved = app.load_demo(tmp_path / "last.ckpt", data_dir=cifar_dir)  # --data-dir: the data
    dm = CIFAR10DataModule(cifar_dir, num_workers=0)
    dm.setup()
    assert (moved.mean, moved.std, moved.classes) == (dm.mean, dm.std, CLASSES)
    assert len(moved.test_images) == 200 and f"in {cifar_dir}" in moved.data_note


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]
)
def test_any_image_mode_becomes_rgb(mode, tmp_path, photo):
    image = Image.open(photo)
    if mode in ("LA", "RGBA"):
        image = image.convert(mode)
        image.putalpha(0)  # fully transparent
    elif mode in ("I;16", "I", "F"):
        grey = np.asarray(image.convert("L"), np.float32) * 200
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        image = Image.fromarray(grey.astype(dtype))
    else:
        image = image.convert(mode)
    extension = {"CMYK": "jpg", "YCbCr": "jpg", "F": "tiff", "I": "tiff"}.get(mode, "png")
    image.save(tmp_path / f"upload.{extension}")
    rgb, original = serving.read_image(tmp_path / f"upload.{extension}")
    assert rgb.mode == "RGB" and rgb.size == (300, 200) and original.startswith("300x200")
    pixels = np.asarray(rgb)
    if mode in ("LA", "RGBA"):
        assert pixels.min() == 255  # transparent parts become white, not black
    else:
        assert pixels.std() > 5  # the picture survived the conversion


def test_palette_transparency_becomes_white(tmp_path, photo):
    image = Image.open(photo).convert("P")
    transparent = image.getpixel((0, 0))
    image.save(tmp_path / "palette.png", transparency=transparent)
    pixels = np.asarray(serving.read_image(tmp_path / "palette.png")[0])
    assert (pixels[np.asarray(image) == transparent] == 255).all() and pixels.min() < 200


def test_upload_is_cropped_to_its_centre_square(tmp_path):
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # white centre square between black side bands
    Image.fromarray(wide).save(tmp_path / "wide.png")
    upload = serving.prepare_upload(tmp_path / "wide.png")
    assert upload.model_input.shape == (32, 32, 3) and upload.display.shape == (256, 256, 3)
    assert upload.model_input.min() >= 250 and "300x100" in upload.description


def test_analyse_upload(demo, photo):
    probs, overlay, model_input, status = serving.analyse_upload(demo, photo, "layer2", 0.5)
    assert list(probs) == list(CLASSES) and sum(probs.values()) == pytest.approx(1, abs=1e-5)
    top = max(probs, key=probs.get)
    assert overlay.shape == (256, 256, 3) and overlay.dtype == np.uint8
    assert model_input.shape == (256, 256, 3)
    assert (model_input[:8, :8] == model_input[0, 0]).all()  # each pixel an 8x8 block
    assert f"**{top}**" in status and "photo.png: 300x200 RGB PNG" in status
    without_heatmap = serving.analyse_upload(demo, photo, "layer1", 0.0)[1]
    np.testing.assert_allclose(without_heatmap, serving.prepare_upload(photo).display, atol=2)


def test_analyse_upload_rejects_bad_settings(demo, photo):
    with pytest.raises(ValueError, match="no GradCAM layer 'fc'.*layer3, layer2"):
        serving.analyse_upload(demo, photo, "fc")
    with pytest.raises(ValueError, match="opacity must be between 0 and 1"):
        serving.analyse_upload(demo, photo, "layer2", 1.5)


@pytest.mark.parametrize(
    "name, message",
    [
        ("notes.txt", "notes.txt is not an image file this app can read"),
        ("empty.png", "empty.png is not an image file"),
        ("dot.png", "dot.png is only 1x1 pixels: upload an image of at least 8x8"),
        ("corrupt.png", "corrupt.png could not be decoded .*damaged or incomplete"),
        ("huge.png", "huge.png is 9000x9000 .81 M pixels., more than the 50 M pixels"),
    ],
)
def test_bad_uploads_get_a_clear_message(demo, bad_files, name, message):
    with pytest.raises(ValueError, match=message):
        serving.analyse_upload(demo, bad_files / name, "layer2")


def test_a_6000x6000_upload_works(demo, tmp_path):
    big = Image.new("L", (6000, 6000), 40)
    big.paste(220, (2000, 2000, 4000, 4000))
    big.save(tmp_path / "big.png")
    probs, overlay, model_input, status = serving.analyse_upload(
        demo, tmp_path / "big.png", "layer2"
    )
    assert "6000x6000 L PNG" in status and overlay.shape == (256, 256, 3)
    assert model_input[128, 128, 0] > 200 and model_input[4, 4, 0] < 60  # the bright centre square


def test_classify_batch_skips_and_names_bad_files(demo, photo, bad_files):
    files = [photo, bad_files / "notes.txt", photo, bad_files / "dot.png"]
    items, status = serving.classify_batch(demo, files)
    assert len(items) == 2 and items[0][0].shape == (128, 128, 3)
    probs = serving.analyse_upload(demo, photo, "layer2")[0]
    top = max(probs, key=probs.get)
    assert items[0][1].startswith(f"{top} ") and items[0][1].endswith("(photo.png)")
    assert "Classified 2 of 4 files" in status and "notes.txt is not an image" in status
    assert "dot.png" in status


def test_mistakes_gallery_shows_real_mistakes_most_confident_first(demo):
    items, status = app.mistakes_gallery(demo, 5)
    index, predicted, confidence = app.find_mistakes(demo)
    assert len(items) == min(5, len(index)) > 0 and f"{len(index)} mistakes among 60" in status
    assert f"(accuracy {1 - len(index) / 60:.1%})" in status
    for (image, caption), i, p in zip(items, index, predicted):
        np.testing.assert_array_equal(image[::4, ::4], demo.test_images[i])
        true = CLASSES[demo.test_labels[i]]
        assert caption.startswith(f"{true} → {CLASSES[p]} ") and true != CLASSES[p]
    assert list(confidence) == sorted(confidence, reverse=True)
    on_true = app.mistakes_gallery(demo, 5, "true class", "layer2", 0.6)
    on_predicted = app.mistakes_gallery(demo, 5, "predicted class", "layer2", 0.6)
    assert "for the true class" in on_true[1]
    assert not np.array_equal(on_true[0][0][0], items[0][0])
    assert not np.array_equal(on_true[0][0][0], on_predicted[0][0][0])
    with pytest.raises(ValueError, match="overlay must be one of"):
        app.mistakes_gallery(demo, 5, "both")


def test_examples_are_written_in_several_modes_and_all_classify(demo, tmp_path):
    paths = app.write_examples(demo, tmp_path)
    modes = {Image.open(p).mode for p in paths}
    assert len(paths) == len(app.EXAMPLE_FORMATS) and {"L", "P", "RGBA", "CMYK"} <= modes
    items, status = serving.classify_batch(demo, paths)
    assert len(items) == len(paths), status


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(demo, tmp_path_factory):
    from gradio_client import Client

    ui = app.build_ui(demo, tmp_path_factory.mktemp("examples"))
    _, url, _ = ui.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        quiet=True,
        prevent_thread_lock=True,
        max_file_size=serving.MAX_FILE_SIZE,
    )
    try:
        yield Client(url, verbose=False)
    finally:
        ui.close()


def test_launched_app_through_gradio_client(client, photo, bad_files):
    from gradio_client import handle_file

    label, overlay, model_input, status = client.predict(
        handle_file(str(photo)), "layer2", 0.5, api_name="/analyse"
    )
    assert label["label"] in CLASSES and len(label["confidences"]) == serving.TOP_K
    assert Image.open(overlay).size == (256, 256) and Image.open(model_input).size == (256, 256)
    assert f"**{label['label']}**" in status
    label, overlay, _, status = client.predict(
        handle_file(str(bad_files / "corrupt.png")), "layer2", 0.5, api_name="/analyse"
    )
    assert overlay is None
    assert status.startswith("**Could not use this upload:** corrupt.png could not be decoded")
    label, _, _, status = client.predict(
        handle_file(str(photo)), "layer3", 0.3, api_name="/analyse"
    )
    assert label["label"] in CLASSES  # still serving after the bad upload
    gallery, status = client.predict(4, "predicted class", "layer1", 0.5, api_name="/mistakes")
    assert len(gallery) == 4 and " → " in gallery[0]["caption"]
    files = [handle_file(str(photo)), handle_file(str(bad_files / "notes.txt"))]
    gallery, status = client.predict(files, api_name="/classify_batch")
    assert len(gallery) == 1 and "Classified 1 of 2 files" in status
