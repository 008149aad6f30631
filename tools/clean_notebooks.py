"""Take the machine's own paths (and terminal colour codes and progress-bar redraws) out of executed
notebooks' outputs before they are committed.

    python tools/clean_notebooks.py [notebooks/*.ipynb]      # default: every notebook in notebooks/

Warnings name the file they come from (.../.venv/lib/python3.12/site-packages/...), and nothing else
in an output should point into the machine that ran it: such paths become `site-packages/...`, and
paths inside this repository become relative. tests/test_no_machine_paths.py fails on any that is
left."""

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SITE_PACKAGES = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s'\"()<>]*?[/\\](?:site|dist)-packages[/\\]")
# What an absolute path of a machine looks like in an output (POSIX homes, temp folders, Colab,
# Windows drives).
MACHINE_PATH = re.compile(
    r"(?<![\w.:/])(?:/(?:root|home|Users|tmp|var|work|content|opt|usr|mnt|private)/|"
    r"[A-Za-z]:\\\\?(?:Users|Windows))"
)


# Terminal colour codes, and a progress bar's earlier states (each redraw starts with a carriage
# return): GitHub shows them as noise.
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
REDRAWN = re.compile(r"[^\n\r]+\r(?=[^\n])")


def clean_text(text, root=ROOT):
    text = REDRAWN.sub("", ANSI_COLOUR.sub("", text))
    text = SITE_PACKAGES.sub("site-packages/", text)
    return text.replace(f"{root}/", "").replace(str(root), ".")


def output_texts(output):
    """(holder, key) of each text part of one cell output: a stream, a traceback, a text/*
    representation."""
    kind = output.get("output_type")
    if kind == "stream":
        yield output, "text"
    if kind == "error":
        yield output, "traceback"
    for mime in output.get("data", {}):
        if mime.startswith("text/"):
            yield output["data"], mime


def clean(path, root=ROOT):
    """Rewrite `path` with cleaned outputs; returns whether anything changed."""
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for holder, key in output_texts(output):
                value = holder[key]
                new = (
                    [clean_text(line, root) for line in value]
                    if isinstance(value, list)
                    else clean_text(value, root)
                )
                if new != value:
                    holder[key] = new
                    changed = True
    if changed:
        nbformat.write(notebook, path)
    return changed


def machine_paths(path):
    """(cell number, excerpt) of every output text of a notebook that still shows a machine path."""
    found = []
    for number, cell in enumerate(nbformat.read(path, as_version=4).cells):
        for output in cell.get("outputs", []):
            for holder, key in output_texts(output):
                value = holder[key]
                text = "\n".join(value) if isinstance(value, list) else str(value)
                found += [
                    (number, text[max(0, m.start() - 40) : m.end() + 40])
                    for m in MACHINE_PATH.finditer(text)
                ]
    return found


def main(argv=None):
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    paths = paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        if clean(path):
            print(f"cleaned {path}")
    left = {path: machine_paths(path) for path in paths}
    for path, found in left.items():
        for number, excerpt in found:
            print(
                f"error: {path} cell {number} still shows a machine path: {excerpt!r}",
                file=sys.stderr,
            )
    return 2 if any(left.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
