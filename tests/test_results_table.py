"""The README tables come from the result files alone (fixture files here, made up for the test)."""

import json

import pytest

from plumbing import records
from tools import results_table
from tools.results_table import BEGIN, END

README = f"# Title\n\n## Results\n\n{BEGIN}\nold table\n{END}\n\n## After\ntext\n"


def run_record(seed, acc, tta, wall, recipe="dawn", device="Test GPU"):
    return {
        "kind": "time_to_accuracy",
        "recipe": recipe,
        "model": "custom_resnet",
        "epochs": 24,
        "batch_size": 512,
        "seed": seed,
        "device": device,
        "data": "CIFAR-10 (JPEG offline copy)",
        "train_images": 50000,
        "test_images": 10000,
        "augment_on": "device",
        "channels_last": True,
        "precision": "bf16-mixed",
        "compile": False,
        "test_acc": acc,
        "test_acc_tta": tta,
        "wall_seconds": wall,
        "train_seconds": wall - 3,
        "torch": "2.11.0",
        "load_before": [0.5 + seed, 1, 1],
        "load_after": [2.0, 1, 1],
    }


BENCH = {
    "kind": "throughput",
    "model": "custom_resnet",
    "batch_size": 64,
    "device": "Test CPU",
    "augment_on": "loader",
    "num_workers": 0,
    "precision": "32-true",
    "channels_last": False,
    "compile": False,
    "pipeline_images_per_second": 45.5,
    "bare_images_per_second": 50.0,
    "ratio": 0.91,
    "median_round_ratio": 0.925,
    "load_before": [1.5, 1, 1],
    "load_after": [2.25, 1, 1],
}


@pytest.fixture
def results_dir(tmp_path):
    folder = tmp_path / "results"
    for seed, (acc, tta, wall) in enumerate(
        [(0.94, 0.945, 20.0), (0.95, 0.955, 22.0), (0.96, 0.965, 24.0)]
    ):
        records.write_record(folder, run_record(seed, acc, tta, wall))
    records.write_record(folder, run_record(0, 0.9, None, 30.0, recipe="course"))
    airbench = {**run_record(1, 0.93, 0.94, 4.0, recipe="airbench94"), "tta": "mirror+translate"}
    del airbench["load_before"], airbench["load_after"]  # its records have none
    records.write_record(folder, airbench)
    (folder / "bench_cpu_test.json").write_text(json.dumps(BENCH))
    compiled = {**BENCH, "compile": True, "pipeline_images_per_second": 40.0}
    (folder / "bench_cpu_test_compile.json").write_text(json.dumps(compiled))
    return folder


def test_one_row_per_setting_with_mean_and_spread_over_seeds(results_dir):
    rows = results_table.run_rows(results_table.load_records(results_dir)["time_to_accuracy"])
    assert [(r["recipe"], r["seeds"]) for r in rows] == [
        ("airbench94", 1),
        ("course", 1),
        ("dawn", 3),
    ]
    assert rows[0]["test_acc_tta"] == "94.00 (mirror+translate)" and rows[0]["load"] == ""
    rows = rows[1:]
    dawn = rows[1]
    assert dawn["test_acc"] == "95.00 ± 1.00" and dawn["test_acc_tta"] == "95.50 ± 1.00"
    assert dawn["wall_seconds"] == "22.0 ± 2.0" and dawn["train_seconds"] == "19.0 ± 2.0"
    assert dawn["load"] == "0.50-2.50 / 2.00"  # the range over the seeds' runs
    assert rows[0]["test_acc"] == "90.00" and rows[0]["test_acc_tta"] == ""
    assert rows[0]["load"] == "0.50 / 2.00"


def test_readme_gets_both_tables_between_the_markers_and_nothing_else_changes(
    results_dir, tmp_path
):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert results_table.main(["--results-dir", str(results_dir), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title\n\n## Results\n\n" + BEGIN)
    assert text.endswith(END + "\n\n## After\ntext\n")
    assert (
        "| dawn | custom_resnet | 24 | 512 | 3 | 95.00 ± 1.00 | 95.50 ± 1.00 | 19.0 ± 2.0 | "
        "22.0 ± 2.0 | Test GPU | CIFAR-10 (JPEG offline copy) | "
        "device, bf16-mixed, channels-last | 0.50-2.50 / 2.00 | 2.11.0 |"
    ) in text
    # one row per setting, the compiled one after the eager one
    eager = (
        "| Test CPU | custom_resnet | 64 | loader (0) | 32-true | no | no | 45.5 | 50.0 | 0.910 | "
    )
    compiled = (
        "| Test CPU | custom_resnet | 64 | loader (0) | 32-true | no | yes | 40.0 | 50.0 | 0.910 | "
    )
    assert eager + "0.925 | 1.50 / 2.25 |\n" + compiled in text
    assert results_table.main(["--results-dir", str(results_dir), "--readme", str(readme)]) == 0
    assert readme.read_text() == text  # regenerating is idempotent


def test_no_runs_yet_says_so(tmp_path):
    text = results_table.tables(results_table.load_records(tmp_path))
    assert "No runs recorded yet" in text and "Throughput" not in text


def test_rerunning_a_setting_and_seed_replaces_its_file(results_dir):
    records.write_record(results_dir, run_record(0, 0.97, 0.97, 20.0))
    rows = results_table.run_rows(results_table.load_records(results_dir)["time_to_accuracy"])
    assert rows[2]["seeds"] == 3 and rows[2]["test_acc"] == "96.00 ± 1.00"


def test_bad_files_and_missing_markers_are_clear_errors(results_dir, tmp_path, capsys):
    (results_dir / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json is not a results record"):
        results_table.load_records(results_dir)
    (results_dir / "broken.json").write_text(json.dumps({"kind": "time_to_accuracy", "seed": 1}))
    with pytest.raises(ValueError, match="broken.json lacks recipe, model"):
        results_table.load_records(results_dir)
    old_bench = {key: value for key, value in BENCH.items() if key != "augment_on"}
    # a record of an older bench.py, with the old name of augment_on
    (results_dir / "broken.json").write_text(json.dumps({**old_bench, "data_path": "loader"}))
    with pytest.raises(ValueError, match="broken.json lacks augment_on: write it again"):
        results_table.load_records(results_dir)
    (results_dir / "broken.json").unlink()
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert results_table.main(["--results-dir", str(results_dir), "--readme", str(readme)]) == 2
    assert capsys.readouterr().err.startswith("error: ") and readme.read_text() == "# no markers\n"


def test_the_committed_records_give_the_committed_readme_tables(tmp_path):
    from tests.conftest import ROOT

    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    assert (
        results_table.main(["--results-dir", str(ROOT / "results"), "--readme", str(readme)]) == 0
    )
    assert readme.read_text() == (ROOT / "README.md").read_text(), (
        "run python tools/results_table.py"
    )
