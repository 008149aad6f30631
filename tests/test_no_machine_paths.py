"""Committed outputs show no path of the machine that ran them (tools/clean_notebooks.py takes them
out)."""

import nbformat
import pytest

from tests.conftest import ROOT
from tools import clean_notebooks

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_outputs_show_no_machine_path(path):
    assert clean_notebooks.machine_paths(path) == []


def test_cleaning_makes_paths_relative_and_keeps_the_rest(tmp_path):
    root = tmp_path / "kit"
    cell = nbformat.v4.new_code_cell(
        "print(1)",
        outputs=[
            nbformat.v4.new_output(
                "stream",
                name="stderr",
                text=(
                    "/home/me/.venv/lib/python3.12/site-packages/tqdm/auto.py:21: TqdmWarning: "
                    "IProgress not found\n"
                    f"run folder {root}/runs/custom_resnet, data in {root}\n"
                ),
            ),
            nbformat.v4.new_output(
                "execute_result", data={"text/plain": "C:\\Users\\me\\data", "image/png": "AAAA"}
            ),
        ],
    )
    path = tmp_path / "n.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    # a home, a temporary folder twice, a Windows drive
    assert len(clean_notebooks.machine_paths(path)) == 4
    assert clean_notebooks.clean(path, root=root)
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert outputs[0].text == (
        "site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found\n"
        "run folder runs/custom_resnet, data in .\n"
    )
    assert outputs[1].data["image/png"] == "AAAA"
    assert [excerpt for _, excerpt in clean_notebooks.machine_paths(path)] == [
        "C:\\Users\\me\\data"
    ]
