"""Paper-ready outputs: Table 1's gap-bridged figure, readable labels, PNG + PDF + SVG, the layer plot's refusal of a
sweep without layers, and ``peftlab paper`` (collect, tables and figures of a sweep root in one command)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from peftlab.lab.cli import main as peftlab
from peftlab.lab.labels import metric_label, variant_label
from peftlab.lab.results import read_csv, table1, write_csv

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF"
SCORES = {"raw_cls": 0.50, "raw_mean": 0.60, "prefix": 0.58, "lora": 0.66, "bitfit": 0.62, "adapter": 0.70,
          "parallel_adapter": 0.68, "finetune": 0.80}  # fmt: skip
"""Each variant's mean score; seed 2 is 0.02 above it, seed 1 0.02 below (a std over the two of 2.83 x100)."""


def score(variant: str, task: str, seed: int) -> float:
    return SCORES[variant] + (0.05 if task == "mrpc" else 0.0) + (0.02 if seed == 2 else -0.02)


def table1_rows(sweep: str = "t1", variants=("raw_cls", "raw_mean", "lora", "adapter", "finetune")) -> list[dict]:
    return [
        {
            "sweep": sweep,
            "task": task,
            "variant": variant,
            "seed": seed,
            "score": score(variant, task, seed),
            "metric": "combined_score" if task == "mrpc" else "accuracy",
            "train_split": "train",
        }  # fmt: skip
        for task in ("rte", "mrpc")
        for variant in variants
        for seed in (1, 2)
    ]


def layer_rows() -> list[dict]:
    row = {"sweep": "ls", "task": "mrpc", "seed": 1, "metric": "combined_score"}
    adapters = [{**row, "variant": "adapter_ffn", "layer": layer, "score": 0.7 + layer / 100} for layer in (0, 1, 2)]
    return [*adapters, {**row, "variant": "finetune", "score": 0.8}]


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "runs.csv"
    write_csv(table1_rows() + layer_rows(), path)
    return path


def assert_figure_files(base):
    assert (base.parent / f"{base.name}.png").read_bytes()[:8] == PNG
    assert (base.parent / f"{base.name}.pdf").read_bytes()[:4] == PDF
    assert b"<svg" in (base.parent / f"{base.name}.svg").read_bytes()[:1000]


def test_labels_are_the_papers_names():
    assert [variant_label(v) for v in ("raw_cls", "raw_mean", "parallel_adapter", "adapter_ffn", "finetune")] == [
        "probe (CLS)",
        "probe (mean)",
        "parallel adapter",
        "FFN adapter",
        "full fine-tuning",
    ]
    assert (variant_label("ffn_finetune"), variant_label("lora"), variant_label("bitfit")) == (
        "FFN fine-tuning",
        "LoRA",
        "BitFit",
    )
    assert variant_label("some_new_variant") == "some new variant"
    assert metric_label("combined_score", "mrpc") == "F1/accuracy mean"
    assert metric_label("combined_score", "stsb") == "Pearson/Spearman mean"
    assert metric_label("matthews_correlation", "cola") == "Matthews correlation"


def test_table1_figure_is_written_as_png_pdf_and_svg_with_the_tables_gap_bridged(csv_path, tmp_path, capsys):
    out = tmp_path / "fig" / "table1_gap.png"
    assert peftlab(["plot", str(csv_path), "--sweep", "t1", "--gap_bridged", "--out", str(out)]) == 0
    assert_figure_files(tmp_path / "fig" / "table1_gap")
    assert "table1_gap.png, " in capsys.readouterr().out

    from peftlab.lab.commands.plots import sweep_gap_figure

    fig = sweep_gap_figure(read_csv(csv_path), "t1")
    (ax,) = fig.axes
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["probe (CLS)", "probe (mean)", "LoRA", "adapter", "full fine-tuning"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["MRPC", "RTE", "average"]
    table = table1([r for r in read_csv(csv_path) if r["sweep"] == "t1"], ("raw_cls", "raw_mean"), "finetune")
    # adapter: (70 - 60) / (80 - 60) = 50 % on both tasks; its error bar: std 2.83 / gap 20 = 14.1 %
    assert table["derived"][("adapter", "rte")]["gap_bridged"] == pytest.approx(0.5)
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights.count(50.0) == 3 and heights.count(100.0) == 3  # two tasks and the average
    caps = [line for line in ax.get_lines() if line.get_marker() == "_"]
    spans = {round(abs(a.get_ydata()[0] - b.get_ydata()[0]) / 2, 3) for a, b in zip(caps[::2], caps[1::2])}
    assert round(100 * 0.02 * 2**0.5 / 0.2, 3) in spans  # error bars: the std over seeds over the task's gap
    caption = fig.texts[-1].get_text()
    assert "Error bars: ± 1 std over seeds (2 per cell)" in caption and "divided by the task's gap" in caption


def test_a_figure_with_nothing_to_show_is_one_line(tmp_path, capsys):
    rows = [{**r, "score": 0.5} for r in table1_rows()]  # full fine-tuning never above the probe: no gap anywhere
    write_csv(rows, tmp_path / "flat.csv")
    code = peftlab(["plot", str(tmp_path / "flat.csv"), "--sweep", "t1", "--gap_bridged", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nothing to show: no task (mrpc, rte) has a gap bridged" in err
    assert not list(tmp_path.glob("f.*"))


def test_layer_plot_refuses_a_sweep_without_layers(csv_path, tmp_path, capsys):
    out = tmp_path / "layer.png"
    assert peftlab(["plot", str(csv_path), "--sweep", "t1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("error: no runs of sweep 't1' (rte) have a layer, so a figure over layer would show nothing")
    assert "sweeps with a layer: ls;" in err and "--gap_bridged" in err
    assert not list(tmp_path.glob("layer.*"))
    assert peftlab(["plot", str(csv_path), "--sweep", "ls", "--x", "bottleneck_dim", "--out", str(out)]) == 2
    assert "no sweep has one" not in capsys.readouterr().err  # ls has a layer: said, beside the missing axis
    # the layer sweep itself is drawn, with the paper's names, in the three formats
    assert peftlab(["plot", str(csv_path), "--sweep", "ls", "--out", str(out)]) == 0
    assert_figure_files(tmp_path / "layer")
    assert peftlab(["plot", str(csv_path), "--sweep", "gone", "--out", str(out)]) == 2
    assert f"error: no runs of sweep 'gone' in {csv_path}; sweeps found: t1, ls\n" == capsys.readouterr().err


def finished_runs(root, sweep: str = "table1_paper") -> None:
    """Run folders as a sweep leaves them (sweep_point.json, args.json, all_results.json with a best and a last
    epoch): Table 1's rows on RTE and MRPC, two seeds."""
    for task in ("rte", "mrpc"):
        metric = "combined_score" if task == "mrpc" else "accuracy"
        for variant in SCORES:
            for seed in (1, 2):
                folder = root / task / variant / f"seed{seed}"
                folder.mkdir(parents=True)
                point = {"sweep": sweep, "task": task, "variant": variant, "layer": None, "bottleneck_dim": None,
                         "seed": seed}  # fmt: skip
                (folder / "sweep_point.json").write_text(json.dumps(point))
                (folder / "args.json").write_text(json.dumps({"method": variant, "protocol": "paper"}))
                best, last = score(variant, task, seed), score(variant, task, seed) - 0.01
                (folder / "all_results.json").write_text(json.dumps({
                    f"eval_{metric}": best,
                    "best_evaluation": {f"eval_{metric}": best, "epoch": 3.0},
                    "last_evaluation": {f"eval_{metric}": last, "epoch": 5.0},
                    "data_protocol": {"train_split": "train", "eval_splits": {"validation": "validation"}},
                }))  # fmt: skip


def test_peftlab_paper_table1_collects_and_writes_the_tables_and_figures(tmp_path, capsys):
    root, out = tmp_path / "runs", tmp_path / "paper"
    finished_runs(root)
    command = [sys.executable, "-m", "peftlab.lab.cli", "paper", "table1", str(root), "--out", str(out)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stems = ["table1_paper", "table1_paper_gap", "table1_paper_last", "table1_paper_last_gap"]
    tables = [out / f"{stem}.{ext}" for stem in stems for ext in ("md", "csv", "tex")]
    figures = [
        out / f"{stem}_gap.{ext}" for stem in ("table1_paper", "table1_paper_last") for ext in ("png", "pdf", "svg")
    ]
    printed = {line.strip() for line in proc.stdout.splitlines()[1:]}
    assert printed == {str(p) for p in [out / "runs.csv", *tables, *figures]}
    assert proc.stdout.startswith("table1 (table1_paper, 32 runs): 19 files")
    for base in ("table1_paper_gap", "table1_paper_last_gap"):
        assert_figure_files(out / base)
    # the tables are peftlab table's of the CSV collected, with the paper's rows in the paper's order
    table = ["table", str(out / "runs.csv"), "--sweep", "table1_paper", "--variants", ",".join(SCORES)]
    for stem, extra in (("table1_paper", []), ("table1_paper_last_gap", ["--score", "last", "--cells", "gap_bridged"])):
        assert peftlab([*table, *extra, "--out", str(tmp_path / stem)]) == 0
        assert (out / f"{stem}.md").read_text() == (tmp_path / f"{stem}.md").read_text()
    assert "| adapter | 75.0 ± 2.8 (2) | 70.0 ± 2.8 (2) |" in (out / "table1_paper.md").read_text()
    assert "| adapter | 74.0 ± 2.8 (2) | 69.0 ± 2.8 (2) |" in (out / "table1_paper_last.md").read_text()

    # a sweep the root lacks, a row the sweep lacks, a sweep without layers: one line each, naming what is there
    def fails(*args):
        capsys.readouterr()
        code, err = peftlab(["paper", *args, "--out", str(tmp_path / "bad")]), capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        return err

    assert fails("table1", str(root), "--sweep", "table1") == (
        f"error: no runs of sweep 'table1' under {root}; sweeps found: table1_paper\n"
    )
    assert not (tmp_path / "bad").exists()
    missing = fails("layer_sweep", str(root), "--sweep", "table1_paper")
    assert (
        "has no runs of adapter_ffn, adapter_attn, ffn_finetune, raw" in missing
        and "its variants: adapter,bitfit,finetune,lora,parallel_adapter,prefix,raw_cls,raw_mean" in missing
    )
    layers = fails("layer_sweep", str(root), "--sweep", "table1_paper", "--variants", "lora,finetune")
    assert "no runs of sweep 'table1_paper' under" in layers and "have a layer" in layers
    assert "--variants bottleneck=a,b" in fails("scaleup", str(root), "--variants", "a,b")
    assert "no such folder" in fails("table1", str(tmp_path / "absent"))
