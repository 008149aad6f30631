"""Result records in results/*.json and the README tables made from them (nothing in those tables
is typed by hand).

    python tools/results_table.py [--results-dir results] [--readme README.md]

Two kinds of record: time-to-accuracy runs (train.py --results-dir, tools/airbench_reference.py),
one file per run, averaged over seeds here; and throughput benchmarks (tools/bench.py).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plumbing.files import atomic_write_text
from plumbing.records import APP_LATENCY, RUN, RUN_KEYS, SPACE_LATENCY, THROUGHPUT, THROUGHPUT_KEYS

# Runs that differ only in the seed (hence in their results) are one row of the table.
GROUP_KEYS = tuple(
    key
    for key in RUN_KEYS
    if key not in ("seed", "test_acc", "test_acc_tta", "wall_seconds", "train_seconds")
)
BEGIN = (
    "<!-- results tables: written by `python tools/results_table.py` from results/*.json, "
    "not by hand -->"
)
END = "<!-- end of results tables -->"


def load_records(folder):
    """{kind: [records]} of every results file in `folder`; a malformed file is a ValueError
    naming it."""
    found = {RUN: [], THROUGHPUT: []}
    needs = {RUN: RUN_KEYS, THROUGHPUT: THROUGHPUT_KEYS}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            kind = record["kind"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path} is not a results record ({type(error).__name__}: {error}); "
                "fix or remove it"
            ) from None
        if kind in (APP_LATENCY, SPACE_LATENCY):
            continue
        if kind not in found:
            raise ValueError(f"{path} has kind {kind!r}, expected {RUN!r} or {THROUGHPUT!r}")
        missing = [key for key in needs[kind] if key not in record]
        if missing:
            raise ValueError(
                f"{path} lacks {', '.join(missing)}: write it again with the tool that made it"
            )
        found[kind].append(record)
    return found


def mean_sd(values, scale=1.0, digits=2):
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def run_rows(records):
    """One row per setting: seeds, and mean ± sample standard deviation over them."""
    groups = {}
    for record in records:
        groups.setdefault(tuple(str(record[key]) for key in GROUP_KEYS), []).append(record)
    rows = []
    for runs in groups.values():
        first = runs[0]
        tta = [r["test_acc_tta"] for r in runs if r["test_acc_tta"] is not None]
        setup = (
            f"{first['augment_on']}, {first['precision']}"
            + (", channels-last" if first["channels_last"] else "")
            + (", compiled" if first["compile"] else "")
        )
        whole = first["train_images"] in (50000, None)
        data = first["data"] + ("" if whole else f", {first['train_images']} train")
        rows.append(
            {
                "recipe": first["recipe"],
                "model": first["model"],
                "epochs": first["epochs"],
                "device": first["device"],
                "data": data,
                "setup": setup,
                "torch": first["torch"],
                "seeds": len(runs),
                "test_acc": mean_sd([r["test_acc"] for r in runs], 100),
                "test_acc_tta": (
                    mean_sd(tta, 100)
                    + ("" if first.get("tta", "mirror") == "mirror" else f" ({first['tta']})")
                )
                if len(tta) == len(runs)
                else "",
                "batch_size": first["batch_size"],
                "train_seconds": mean_sd([r["train_seconds"] for r in runs], digits=1),
                "wall_seconds": mean_sd([r["wall_seconds"] for r in runs], digits=1),
                "load": load_range(runs),
            }
        )
    return sorted(
        rows, key=lambda r: (r["device"], r["data"], r["model"], r["recipe"], float(r["epochs"]))
    )


def load_range(runs):
    """'before / after' of the 1-minute load average over a row's runs (records without one, as
    airbench's, show nothing)."""
    if not all(r.get("load_before") and r.get("load_after") for r in runs):
        return ""

    def span(values):
        low, high = min(values), max(values)
        return f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"

    return (
        f"{span([r['load_before'][0] for r in runs])} / {span([r['load_after'][0] for r in runs])}"
    )


def markdown(columns, rows):
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(row[key]) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


RUN_COLUMNS = (
    ("recipe", "recipe"),
    ("model", "model"),
    ("epochs", "epochs"),
    ("batch_size", "batch"),
    ("seeds", "seeds"),
    ("test_acc", "test acc. %"),
    ("test_acc_tta", "TTA acc. % (mirror unless noted)"),
    ("train_seconds", "train s"),
    ("wall_seconds", "wall s"),
    ("device", "device"),
    ("data", "data"),
    ("setup", "augmented on, precision"),
    ("load", "load avg. (1 min) before/after"),
    ("torch", "torch"),
)
# one row per setting: the same model and batch sorted by what else differs
BENCH_ORDER = ("device", "model", "batch_size", "precision", "augment_on", "num_workers", "compile")
THROUGHPUT_COLUMNS = (
    ("device", "device"),
    ("model", "model"),
    ("batch_size", "batch"),
    ("data", "augmented on (workers)"),
    ("precision", "precision"),
    ("layout", "channels-last"),
    ("compiled", "compiled"),
    ("pipeline", "pipeline images/s"),
    ("bare", "bare loop images/s"),
    ("ratio", "ratio of the best rounds"),
    ("round_ratio", "median ratio per round"),
    ("load", "load avg. (1 min) before/after"),
)


def tables(found):
    """The markdown that goes between the README markers."""
    parts = [
        "Time to accuracy: test accuracy after the last epoch, without and with "
        "test-time augmentation (mean ± standard deviation over seeds); train seconds: the "
        "training epochs alone; wall seconds: the whole run, data loading and testing included."
    ]
    runs = run_rows(found[RUN])
    parts.append(
        markdown(RUN_COLUMNS, runs)
        if runs
        else "No runs recorded yet: `tools/gpu_runs.sh` makes them on a GPU."
    )
    bench = [
        {
            **b,
            "pipeline": f"{b['pipeline_images_per_second']:.1f}",
            "bare": f"{b['bare_images_per_second']:.1f}",
            "data": f"{b['augment_on']} ({b['num_workers']})",
            "layout": "yes" if b["channels_last"] else "no",
            "compiled": "yes" if b["compile"] else "no",
            "ratio": f"{b['ratio']:.3f}",
            "round_ratio": f"{b['median_round_ratio']:.3f}",
            "load": f"{b['load_before'][0]:.2f} / {b['load_after'][0]:.2f}",
        }
        for b in sorted(found[THROUGHPUT], key=lambda b: [b[key] for key in BENCH_ORDER])
    ]
    if bench:
        parts.append(
            "Throughput (`tools/bench.py`): training images per second of the "
            "whole pipeline (Lightning, data path, logging, callbacks) against a bare "
            "PyTorch loop over the same model and batch, in alternating rounds of one "
            "process; the load average shows how busy the machine was with other work."
        )
        parts.append(markdown(THROUGHPUT_COLUMNS, bench))
    return "\n\n".join(parts)


def replace_between_markers(text, generated, where="README.md"):
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{where} needs the two marker lines, in this order:\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{generated}\n{END}{tail}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args(argv)
    try:
        found = load_records(args.results_dir)
        readme = Path(args.readme)
        text = readme.read_text()
        atomic_write_text(readme, replace_between_markers(text, tables(found), str(readme)))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{readme}: {len(found[RUN])} runs in {len(run_rows(found[RUN]))} rows, "
        f"{len(found[THROUGHPUT])} throughput benchmarks"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
