"""The repository URL has one home (tools/repo_url.py); README badges and notebook set-up cells hold
copies."""

import shutil

import nbformat
import pytest

from tests.conftest import ROOT
from tools import repo_url


def test_every_copy_agrees_with_the_one_home():
    found = repo_url.copies()
    assert len(found[ROOT / "README.md"]) >= 4  # one Colab badge per notebook
    for path, urls in found.items():
        assert urls and set(urls) == {repo_url.REPO_URL}, f"{path.name} holds {urls}"
    assert repo_url.main([]) == 0


def test_a_fork_rewrites_every_copy(tmp_path):
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(
        ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("*.py", ".*")
    )
    shutil.copy(ROOT / "tools" / "repo_url.py", tmp_path / "tools" / "repo_url.py")
    fork = "https://github.com/someone/my-fork"
    changed = repo_url.rewrite(fork + ".git", root=tmp_path)
    assert {p.name for p in changed} >= {"README.md", "repo_url.py", "04_custom_resnet.ipynb"}
    for path, urls in repo_url.copies(tmp_path).items():
        assert urls and set(urls) == {fork}, f"{path.name} holds {urls}"
    assert (
        'REPO_URL = "https://github.com/someone/my-fork"'
        in (tmp_path / "tools" / "repo_url.py").read_text()
    )
    readme = (tmp_path / "README.md").read_text()
    assert (
        repo_url.REPO_URL not in readme
        and "colab.research.google.com/github/someone/my-fork/blob/main" in readme
    )
    setup = nbformat.read(tmp_path / "notebooks" / "01_data.ipynb", as_version=4).cells[1].source
    assert "git clone" in setup and "{REPO_URL}" in setup


@pytest.mark.parametrize(
    "url", ["github.com/a/b", "https://gitlab.com/a/b", "https://github.com/a"]
)
def test_a_url_that_is_not_a_github_repository_is_refused(url, capsys):
    assert repo_url.main([url]) == 2
    assert capsys.readouterr().err.startswith("error: ")
