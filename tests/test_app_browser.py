"""End to end in a real browser: `python app.py` on localhost, driven by headless Debian chromium
via playwright."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from data import CLASSES
from tests.conftest import ROOT
from tests.test_app import free_port

# Debian's chromium, as for the README's screenshot (not playwright's own browser download)
from tools.screenshot_app import CHROMIUM, CHROMIUM_ARGS

TIMEOUT_MS = 120_000  # generous: CI runs this on 2 busy cores


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)  # in CI the browser test must run, never be skipped quietly
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def app_url(tiny_run, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "--checkpoint",
                str(tiny_run / "last.ckpt"),
                "--port",
                str(port),
            ],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"app.py exited with status {process.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"app.py did not answer on {url} within 300 s:\n{log.read_text()[-3000:]}"
                    )
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture()
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url)
    yield page
    page.close()


def upload(page, path):
    page.locator("#upload input[type=file]").set_input_files(str(path))


def test_upload_shows_labels_and_gradcam(page, tiny_run, tmp_path):
    from playwright.sync_api import expect

    Image.new("RGB", (240, 160), (30, 90, 200)).save(tmp_path / "blue.png")
    upload(page, tmp_path / "blue.png")
    expect(page.locator("#status")).to_contain_text("Top class")
    status = page.locator("#status").inner_text()
    top = status.split("Top class ")[1].split(" ")[0]
    assert top in CLASSES and "blue.png: 240x160 RGB PNG" in status
    expect(page.locator("#prediction")).to_contain_text(top)
    labels = page.locator("#prediction").inner_text()
    # the top 3 with their confidences
    assert "%" in labels and sum(name in labels.split() for name in CLASSES) >= 3
    cam = page.locator("#gradcam img")
    expect(cam).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=cam.element_handle())
    assert cam.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [256, 256]


def test_non_image_file_is_refused_with_a_message(page, tmp_path):
    from playwright.sync_api import expect

    (tmp_path / "notes.txt").write_text("not an image\n")
    upload(page, tmp_path / "notes.txt")
    # Gradio's image upload itself refuses files that are not image/*, in a toast
    toast = page.get_by_test_id("toast-text")
    expect(toast).to_contain_text("Invalid file type: notes.txt. Only image/* allowed")


def test_broken_image_gets_the_apps_message_and_the_app_keeps_serving(page, tmp_path):
    from playwright.sync_api import expect

    # the PNG signature, nothing valid after it
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    upload(page, tmp_path / "broken.png")
    message = "broken.png is not an image file this app can read"
    expect(page.locator("#status")).to_contain_text(f"Could not use this upload: {message}")
    expect(page.get_by_test_id("toast-text").filter(has_text=message)).to_be_visible()
    page.reload()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "red.png")
    upload(page, tmp_path / "red.png")
    expect(page.locator("#status")).to_contain_text("red.png: 64x64 RGB PNG")
