"""A CIFAR-10 classifier demo: upload any image for its top classes and a GradCAM heat map, or
classify a batch.

Written by `python app.py --checkpoint CKPT --export-space DEST` of the training kit (demo/space.py
copies this file as DEST/app.py). `python app.py` serves it on the port in GRADIO_SERVER_PORT
(which Spaces set) or 7860; it needs only this folder and its requirements.txt.
"""

import os
import sys
from pathlib import Path

from demo.serving import MAX_FILE_SIZE, build_ui, load_exported

HERE = Path(__file__).resolve().parent


def main():
    try:
        demo = load_exported(HERE)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    examples = sorted(str(path) for path in (HERE / "examples").glob("*.png"))
    # server_name None: Gradio's own default, or GRADIO_SERVER_NAME (0.0.0.0 on Spaces)
    build_ui(demo, examples).launch(
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(HERE / "examples")],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
