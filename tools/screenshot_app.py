"""The README's screenshot of the demo app: one upload with its prediction and GradCAM, and the
gallery of mistakes.

    python tools/screenshot_app.py --checkpoint RUN_DIR/last.ckpt --image photo.jpg
                                   [--out images/app_demo.png]

Launches app.py's UI on localhost and drives it with headless Debian chromium (apt-get install
chromium) through playwright, as tests/test_app_browser.py does.
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules, when run as python tools/NAME.py

import app
from plumbing.files import atomic_write_bytes
from tools.bench_app import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def screenshot(url, image, overlay_for, count):
    """PNG bytes of the page from the top down to the gallery of mistakes."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
        page.set_default_timeout(300_000)
        expect.set_options(timeout=300_000)  # computing the gallery takes a while on a busy CPU
        page.goto(url)
        page.locator("#upload input[type=file]").set_input_files(str(image))
        expect(page.locator("#status")).to_contain_text("Top class")
        page.get_by_label(overlay_for).check()
        page.locator("#mistakes-count input[type=number]").fill(str(count))
        page.locator("#mistakes-count input[type=number]").press("Enter")
        page.get_by_role("button", name="Show mistakes").click()
        expect(page.locator("#gallery-status")).to_contain_text("most confident")
        page.wait_for_function("() => [...document.querySelectorAll('img')].every(i => i.complete)")
        page.mouse.move(0, 0)  # no hover effects in the picture
        bottom = page.locator("#gallery-status").bounding_box()
        height = bottom["y"] + bottom["height"] + 16
        png = page.screenshot(
            clip={"x": 0, "y": 0, "width": 1400, "height": height}, full_page=True
        )
        browser.close()
    return png


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True, help="the upload shown in the screenshot")
    parser.add_argument(
        "--overlay",
        default="predicted class",
        choices=app.OVERLAY_CHOICES,
        help="GradCAM in the gallery of mistakes",
    )
    parser.add_argument("--count", type=int, default=12, help="mistakes in the gallery")
    parser.add_argument(
        "--data-dir",
        help="the run's data folder, when summary.json does not say (a notebook's run)",
    )
    parser.add_argument("--out", default="images/app_demo.png")
    args = parser.parse_args(argv)
    try:
        demo = app.load_demo(args.checkpoint, args.data_dir)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as example_dir:
        ui = app.build_ui(demo, example_dir)
        _, url, _ = ui.launch(
            server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True
        )
        try:
            atomic_write_bytes(args.out, screenshot(url, args.image, args.overlay, args.count))
        finally:
            ui.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
