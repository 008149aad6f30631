"""The public repository's URL: its one home, and the command that writes it everywhere it is
copied.

python tools/repo_url.py                                   # check: README badges and notebooks
agree with it python tools/repo_url.py https://github.com/YOU/FORK       # a fork: rewrite it here,
in README and notebooks

The Colab badges in README.md open github.com/OWNER/NAME/blob/main/notebooks/... and each notebook's
set-up cell clones REPO_URL: neither can read this file at that moment (nothing is cloned yet), so
they hold copies, kept equal to REPO_URL by this command and checked by tests/test_repo_url.py."""

import argparse
import re
import sys
from pathlib import Path

import nbformat

REPO_URL = "https://github.com/cifar10-course/cifar10-resnet-kit"

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"^https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$")
BADGE = re.compile(
    r"https://colab\.research\.google\.com/github/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/blob/"
)
CLONE = re.compile(r'REPO_URL = "[^"]*"')


def parse(url):
    """(owner, name) of a GitHub repository URL, or a ValueError saying what is expected."""
    match = URL.match(url.strip())
    if not match:
        raise ValueError(
            f"{url!r} is not a GitHub repository URL like https://github.com/OWNER/NAME"
        )
    return match.group(1), match.group(2)


def copies(root=ROOT):
    """{file: [repository URLs it holds]}: README badges (as their github.com URL) and notebook
    set-up cells."""
    found = {}
    readme = root / "README.md"
    found[readme] = [
        "https://github.com/" + "/".join(badge.split("/")[4:6])
        for badge in BADGE.findall(readme.read_text())
    ]
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        sources = "\n".join(cell.source for cell in nbformat.read(notebook, as_version=4).cells)
        found[notebook] = [match.split('"')[1] for match in CLONE.findall(sources)]
    return found


def rewrite(url, root=ROOT):
    """Write `url` into this file, the README badges and every notebook's set-up cell; returns the
    files changed."""
    owner, name = parse(url)
    url = f"https://github.com/{owner}/{name}"
    changed = []
    for path in [root / "README.md", root / "tools" / "repo_url.py"]:
        text = path.read_text()
        new = BADGE.sub(f"https://colab.research.google.com/github/{owner}/{name}/blob/", text)
        # plain mentions too (git clone ...)
        new = CLONE.sub(f'REPO_URL = "{url}"', new.replace(REPO_URL, url))
        if new != text:
            path.write_text(new)
            changed.append(path)
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cells = [cell for cell in notebook.cells if CLONE.search(cell.source)]
        for cell in cells:
            cell.source = CLONE.sub(f'REPO_URL = "{url}"', cell.source)
        if cells:
            nbformat.write(notebook, path)
            changed.append(path)
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "url", nargs="?", help="the new repository URL (without it: check that all copies agree)"
    )
    args = parser.parse_args(argv)
    if args.url:
        try:
            changed = rewrite(args.url)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.url} into {len(changed)} files")
        return 0
    wrong = {
        path: urls
        for path, urls in copies().items()
        if not urls or any(u != REPO_URL for u in urls)
    }
    for path, urls in wrong.items():
        print(
            f"error: {path.relative_to(ROOT)} holds {urls or 'no repository URL'}, not {REPO_URL}",
            file=sys.stderr,
        )
    return 2 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
