"""`modlisa analyze`: run-folder reading, numbers, tables, plots, report files, errors, a real tiny run."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from modlisa.cli.analyze import main as main_analyze
from modlisa.report import NotARunError, build_report, load_run, load_runs
from modlisa.report import tables as T
from modlisa.report.lisa_reference import LISA_TABLE
from modlisa.report.plots import loss_per_epoch
from modlisa.report.runs import data_provenance, describe_root
from modlisa.report.summary import best_epoch, prediction_stats, run_summary, step_losses

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# ---------------------------------------------------------------------- fixtures: run folders written by hand
def _metrics(giou: float, ciou: float, n: int) -> dict:
    return {"giou": giou, "ciou": ciou, "num_queries": n, "intersection": 0, "union": 0}


def _predictions(giou_target: list[tuple[int, int, bool]]) -> str:
    return "".join(json.dumps({"index": i, "query_index": 0, "file": f"x{i}.jpg", "query": "q",
                               "is_sentence": s, "I": a, "U": u, "IoU": a / (u + 1e-5) if u else 1.0}) + "\n"
                   for i, (a, u, s) in enumerate(giou_target))


def _eval_payload(split: str, records: list[tuple[int, int, bool]], data_root: str) -> dict:
    def group(rs: list[tuple[int, int, bool]]) -> dict:
        ious = [a / (u + 1e-5) if u else 1.0 for a, u, _ in rs]
        return {"giou": sum(ious) / len(ious) if ious else 0.0,
                "ciou": sum(a for a, _, _ in rs) / (sum(u for _, u, _ in rs) + 1e-10), "num_queries": len(rs),
                "intersection": sum(a for a, _, _ in rs), "union": sum(u for _, u, _ in rs)}
    baseline = {"giou": 0.0, "ciou": 0.0, "num_queries": len(records), "num_empty_gt": 0,
                "subsets": {"short": {"giou": 0.0}, "long": {"giou": 0.0}}}
    return {"split": split, "checkpoint": "x", "data_root": data_root, "mode": "teacher", **group(records),
            "subsets": {"short": group([r for r in records if not r[2]]), "long": group([r for r in records if r[2]])},
            "loss": None, "protocol": {"name": "lisa-reasonseg"}, "empty_baseline": baseline, "warnings": []}


TEST_RECORDS = [(40, 100, False), (10, 50, False), (30, 40, True), (0, 20, True), (5, 10, True)]
VAL_RECORDS = [(50, 100, False), (20, 40, True)]


def write_run(root: Path, *, data_root: Path, epochs: int = 3, planned: int | None = None,
              val_giou: list[float] | None = None, with_val: bool = True, evals: tuple[str, ...] = ("val", "test"),
              summary: bool = True, bench: dict | None = None, loss_offset: float = 0.0) -> Path:
    """A run folder as train + eval write it, with known numbers."""
    out = root / "outputs"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"data_root": str(data_root), "model": "tiny", "img_size": 64,
                                                     "sam_image_size": 64, "num_epochs": planned or epochs,
                                                     "batch_size": 2, "gradient_accumulation_steps": 1,
                                                     "use_lora": True, "lora_r": 16, "lora_alpha": 32,
                                                     "use_mixed_precision": False}))
    val_giou = val_giou or [0.1 * (e + 1) for e in range(epochs)]
    log = []
    for e in range(1, epochs + 1):
        train = {"loss": 3.0 / e + loss_offset, "ce": 1.0, "mask_bce": 0.5, "mask_dice": 0.4, "mask_focal": 0.0,
                 "iou": 0.05 * e, "giou": 0.05 * e, "ciou": 0.06 * e, "num_queries": 8, "iter_per_sec": 2.0 + e,
                 "avg_iter_time": 1 / (2.0 + e), "median_iter_time": 1 / (2.0 + e), "epoch_time": 2.0,
                 "samples_per_sec": 4.0 + e, "peak_memory_gb": 1.0 + 0.1 * e, "peak_memory_kind": "cpu_peak_rss"}
        val = None
        if with_val:
            val = {**_metrics(val_giou[e - 1], val_giou[e - 1] + 0.01, 2), "loss": 2.5 / e,
                   "subsets": {"short": _metrics(0.1, 0.1, 1), "long": _metrics(0.2, 0.2, 1)}}
            val["iou"] = val["giou"]
        record = {"epoch": e, "global_step": 2 * e, "train": train, "val": val, "lr": 1e-3 / e}
        (out / f"metrics_epoch_{e}.json").write_text(json.dumps(record))
        for step in (1, 2):
            log.append({"epoch": e, "step": step, "global_step": 2 * (e - 1) + step, "loss": 3.0 / e + step,
                        "ce": 1.0 / e + step, "mask_bce": 0.5 / e, "mask_dice": 0.4 / e, "mask_focal": 0.0,
                        "lr": 1e-3 / e, "grad_norm": 2.0 / step, "iter_time": 0.5, "giou": 0.1, "ciou": 0.1})
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if summary:
        best = max(range(epochs), key=lambda i: (val_giou[i], -i)) + 1
        (out / "train_summary.json").write_text(json.dumps({"best_epoch": best, "global_step": 2 * epochs,
                                                            "stopped_early": False}))
    for split, records in (("val", VAL_RECORDS), ("test", TEST_RECORDS)):
        if split in evals:
            (out / f"eval_{split}.json").write_text(json.dumps(_eval_payload(split, records, str(data_root))))
            (out / f"predictions_{split}.jsonl").write_text(_predictions(records))
    if bench is not None:
        (out / "bench.json").write_text(json.dumps(bench))
    return root


@pytest.fixture
def synthetic_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "README.txt").write_text("Synthetic ReasonSeg-format dataset (images of flat coloured shapes).\n")
    return root


# ---------------------------------------------------------------------- numbers and tables
def test_best_epoch_first_on_ties_and_progression_table(tmp_path, synthetic_root):
    run = load_run(write_run(tmp_path / "r", data_root=synthetic_root, epochs=4, val_giou=[0.2, 0.5, 0.5, 0.4]))
    assert best_epoch(run) == {"epoch": 2, "val_giou": 0.5, "val_ciou": 0.51, "summary_epoch": 2}
    table = T.progression_table(run_summary(run))
    assert table.bold_rows == {1}
    assert table.rows[1][0] == "2 (best)"
    assert table.rows[1][7:] == ["50.0", "51.0"]  # val gIoU / cIoU in % with one decimal
    assert table.rows[0][3] == "3.0000" and table.rows[0][4] == "5.0"  # train loss, train gIoU %


def test_eval_percentages_sources_and_prediction_check(tmp_path, synthetic_root):
    run = load_run(write_run(tmp_path / "r", data_root=synthetic_root))
    s = run_summary(run)
    rows = {r[0]: r for r in T.eval_table(s).rows}
    expected_overall = sum(a / (u + 1e-5) for a, u, _ in TEST_RECORDS) / 5
    assert rows["test overall"][1] == f"{100 * expected_overall:.1f}"
    assert rows["test overall"][2] == f"{100 * 85 / 220:.1f}"  # cIoU = sum I / sum U
    assert rows["test short"][3] == "2" and rows["test long"][3] == "3"
    # empty-mask baseline; no wrong-query baseline, grounding or [SEG] rate in this file
    assert rows["val"][4:] == ["0.0", T.MISSING, T.MISSING, T.MISSING, "eval_val.json"]
    stats = prediction_stats(run)
    assert stats["test"]["matches_eval"] is True and stats["test"]["queries"] == 5
    assert stats["test"]["recomputed_ciou"] == pytest.approx(85 / 220)


def test_wrong_query_baseline_and_grounding_columns(tmp_path, synthetic_root):
    root = write_run(tmp_path / "r", data_root=synthetic_root)
    path = root / "outputs" / "eval_test.json"
    payload = json.loads(path.read_text())
    payload["wrong_query_baseline"] = {"giou": 0.125, "ciou": 0.1, "num_queries": 5,
                                       "subsets": {"short": {"giou": 0.25, "ciou": 0.2, "num_queries": 2},
                                                   "long": {"giou": 0.0, "ciou": 0.0, "num_queries": 3}}}
    payload["grounding"] = {"accuracy": 0.8, "num_queries": 5}
    payload["warnings"] = ["the masks do not depend on the query: ..."]
    path.write_text(json.dumps(payload))
    run = load_run(root)
    rows = {r[0]: r for r in T.eval_table(run_summary(run)).rows}
    assert rows["test overall"][5:7] == ["12.5", "80.0"]
    assert rows["test short"][5] == "25.0" and rows["test long"][5] == "0.0"
    assert any("do not depend on the query" in note for note in run.notes)


def test_generate_mode_and_eval_warnings(tmp_path, synthetic_root):
    root = write_run(tmp_path / "r", data_root=synthetic_root)
    out = root / "outputs"
    payload = _eval_payload("test", TEST_RECORDS, str(synthetic_root))
    payload.update(mode="generate", seg_rate=0.6, warnings=["gIoU below the empty-mask baseline"])
    payload["subsets"]["long"]["seg_rate"] = 1.0
    (out / "eval_test_generate.json").write_text(json.dumps(payload))
    (out / "predictions_test_generate.jsonl").write_text(_predictions(TEST_RECORDS))
    run = load_run(root)
    assert "eval_test_generate.json warns: gIoU below the empty-mask baseline" in run.notes
    s = run_summary(run)
    rows = {r[0]: r for r in T.eval_table(s).rows}
    assert rows["test overall (generate)"][7] == "60.0" and rows["test long (generate)"][7] == "100.0"
    assert rows["test overall (generate)"][-1] == "eval_test_generate.json"
    assert rows["test overall"][5] == T.MISSING  # teacher mode: no [SEG] rate
    assert s["predictions"]["test_generate"]["matches_eval"] is True
    assert T.lisa_table([s]).rows[-1][-2] == rows["test overall"][1]  # LISA comparison uses teacher mode


def test_val_falls_back_to_best_training_epoch_and_empty_subset_is_missing(tmp_path, synthetic_root):
    root = write_run(tmp_path / "r", data_root=synthetic_root, epochs=2, val_giou=[0.3, 0.25], evals=("test",))
    payload = json.loads((root / "outputs" / "eval_test.json").read_text())
    payload["subsets"]["short"] = _metrics(0.0, 0.0, 0)  # no short queries on this split
    (root / "outputs" / "eval_test.json").write_text(json.dumps(payload))
    e = run_summary(load_run(root))["eval"]
    assert e["val"]["giou"] == 0.3 and "best epoch 1" in e["val_source"]
    assert e["test_short"] is None
    assert T.pair(e["test_short"]) == T.MISSING


def test_lisa_comparison_rows_match_spec_and_mark_synthetic(tmp_path, synthetic_root):
    s = run_summary(load_run(write_run(tmp_path / "r", data_root=synthetic_root)))
    table = T.lisa_table([s])
    by_method = {r[0]: r for r in table.rows}
    assert by_method["LISA-7B (ft)"][2:] == ["52.9", "54.0", "40.6", "40.6", "49.4", "51.0", "47.3", "48.4"]
    assert by_method["LISA-13B-LLaVA1.5 (ft)"][2:] == ["65.0", "72.9", "55.4", "50.6", "63.2", "65.3", "61.3", "62.2"]
    assert by_method["UGround-7B"][2:] == ["66.1", "72.1", "—", "—", "—", "—", "63.6", "65.4"]
    assert len(table.rows) == len(LISA_TABLE) + 1
    ours = table.rows[-1]
    assert ours[0] == "ours: r" and ours[1].startswith("SYNTHETIC") and table.bold_rows == {len(LISA_TABLE)}
    assert any("NOT comparable" in n for n in table.notes)


def test_data_provenance(tmp_path, synthetic_root):
    official = tmp_path / "ReasonSeg"
    for split, n in (("val", 200), ("test", 779)):
        (official / split).mkdir(parents=True)
        for i in range(n):
            (official / split / f"{i}.json").touch()
    info = describe_root(str(official))
    assert (info.kind, info.official_counts) == ("reasonseg-format", True)
    (official / "test" / "0.json").unlink()
    assert describe_root(str(official)).official_counts is False
    assert describe_root(str(tmp_path / "gone")).kind == "unknown"
    # trained on synthetic data, evaluated elsewhere: the results' data decides, both are named
    root = write_run(tmp_path / "r", data_root=synthetic_root)
    payload = json.loads((root / "outputs" / "eval_test.json").read_text())
    (root / "outputs" / "eval_test.json").write_text(json.dumps({**payload, "data_root": str(official)}))
    info = data_provenance(load_run(root))
    assert info.kind == "reasonseg-format" and str(synthetic_root) in info.detail


def test_step_losses_recover_interval_means():
    class FakeRun:  # step_losses only reads .log
        log = [  # per-step losses 1, 3 | 5, 7 logged every 2 steps; epoch 2 per-step 10, 20 logged every step
            {"epoch": 1, "step": 2, "global_step": 2, "loss": 2.0},
            {"epoch": 1, "step": 4, "global_step": 4, "loss": 4.0},
            {"epoch": 2, "step": 1, "global_step": 5, "loss": 10.0},
            {"epoch": 2, "step": 2, "global_step": 6, "loss": 15.0},
        ]
    steps = step_losses(FakeRun())  # type: ignore[arg-type]
    assert [s["interval_loss"] for s in steps] == pytest.approx([2.0, 6.0, 10.0, 20.0])
    assert [s["running_mean"] for s in steps] == [2.0, 4.0, 10.0, 15.0]


def test_bench_json_summary(tmp_path, synthetic_root):
    bench = {"device": "cpu", "samples_per_sec": 12.5, "train": {"step_median_s": 0.25, "components": {"x": 1}},
             "versions": {"torch": "2.13.0"}, "list": [1, 2]}
    s = run_summary(load_run(write_run(tmp_path / "r", data_root=synthetic_root, bench=bench)))
    rows = dict(tuple(r) for r in T.bench_json_table(s).rows)
    assert rows == {"device": "cpu", "samples_per_sec": "12.5000", "train.step_median_s": "0.2500",
                    "versions.torch": "2.13.0"}


# ---------------------------------------------------------------------- report files
def _check_png(path: Path) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 200
        assert len(img.convert("L").getcolors(1 << 16) or []) > 10  # something is drawn


def test_report_files_single_run(tmp_path, synthetic_root):
    run = write_run(tmp_path / "run", data_root=synthetic_root, bench={"samples_per_sec": 3.0})
    files = build_report([run])
    assert files.out_dir == run / "outputs" / "report"
    assert {p.name for p in files.plots} == {"loss_per_epoch.png", "loss_per_step.png", "iou_per_epoch.png",
                                             "loss_terms_per_step.png", "lr_grad_norm_per_step.png",
                                             "throughput_per_epoch.png", "memory_per_epoch.png"}
    for path in files.plots:
        _check_png(path)
    md = files.markdown.read_text()
    for heading in ("## Runs", "## Evaluation results", "## Comparison with LISA", "## Training progression",
                    "## Benchmark"):
        assert heading in md
    for path in files.plots:
        assert f"]({path.name})" in md
    assert "| **3 (best)** |" in md and "SYNTHETIC" in md
    page = files.html.read_text()
    assert page.count('<img src="data:image/png;base64,') == len(files.plots) == page.count("<img ")
    assert not re.search(r"https?://|src=\"(?!data:)|href=\"(?!#)|<link|@import|url\(", page)
    report = json.loads(files.json.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    (s,) = report["runs"]
    assert s["best_epoch"]["epoch"] == 3 and s["status"] == "finished" and s["data"]["kind"] == "synthetic"
    assert s["benchmark"]["peak_memory_gb"] == pytest.approx(1.3) and s["bench_json"] == {"samples_per_sec": 3.0}
    assert len(report["lisa_reference"]["rows"]) == len(LISA_TABLE)
    assert s["notes"] == []


def test_two_runs_compared(tmp_path, synthetic_root):
    a = write_run(tmp_path / "a" / "run", data_root=synthetic_root, epochs=2)
    b = write_run(tmp_path / "b" / "run", data_root=tmp_path / "elsewhere", epochs=3, loss_offset=1.0)
    out = tmp_path / "report"
    files = build_report([a, b], out)
    report = json.loads(files.json.read_text())
    assert [s["name"] for s in report["runs"]] == ["a/run", "b/run"]
    assert report["runs"][1]["data"]["kind"] == "unknown"
    runs_table = next(t for t in report["tables"] if t["title"] == "Runs side by side")
    assert runs_table["columns"] == ["", "a/run", "b/run"]
    assert dict((r[0], r[1:]) for r in runs_table["rows"])["Epochs done / planned"] == ["2 / 2", "3 / 3"]
    lisa = next(t for t in report["tables"] if t["title"].startswith("Comparison with LISA"))
    assert [r[0] for r in lisa["rows"][-2:]] == ["ours: a/run", "ours: b/run"]
    assert lisa["rows"][-1][1].startswith("unknown")
    summaries = report["runs"]
    fig = loss_per_epoch(summaries)
    assert len(fig.axes[0].lines) == 4  # train + val line per run, overlaid
    assert "a/run train" in [t.get_text() for t in fig.legends[0].get_texts()]
    page = files.html.read_text()
    assert "a/run" in page and "b/run" in page


def test_partial_run_is_reported_not_fatal(tmp_path, synthetic_root):
    root = write_run(tmp_path / "r", data_root=synthetic_root, epochs=1, planned=3, with_val=False, evals=(),
                     summary=False)
    with open(root / "outputs" / "train_log.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "step": 1, "glo')  # the trainer is writing this line
    run = load_run(root)
    text = " | ".join(run.notes)
    assert "still running or interrupted (1 of 3 epochs done)" in text
    assert "the last line (still being written?)" in text
    assert "no validation during training" in text
    assert "no eval_test.json" in text and "no eval_val.json" in text
    files = build_report([root], tmp_path / "out")
    md = files.markdown.read_text()
    assert "not evaluated" in md and "no validation figures, so no best epoch" in md
    report = json.loads(files.json.read_text())
    assert report["runs"][0]["best_epoch"] is None and report["runs"][0]["status"] == "in progress or interrupted"


def test_summary_problems_become_notes(tmp_path, synthetic_root):
    root = write_run(tmp_path / "r", data_root=synthetic_root, epochs=2)
    (root / "outputs" / "train_summary.json").write_text(json.dumps({
        "best_epoch": 2, "global_step": 3, "stopped_early": True, "stop_reason": "3 consecutive non-finite losses",
        "skipped_nonfinite_steps": 3, "fp16_overflow_steps": 0,
        "data": {"train": {"usable": 6, "skipped": 1, "skipped_at_load": 1}, "val": {"usable": 2, "skipped": 0}}}))
    run = load_run(root)
    assert "training stopped early at global step 3: 3 consecutive non-finite losses" in run.notes
    assert "3 optimizer steps skipped (non-finite loss or gradient)" in run.notes
    assert "train data: 2 file(s) skipped (6 usable)" in run.notes
    assert not any("fp16" in n or n.startswith("val data") for n in run.notes)
    assert run_summary(run)["status"] == "stopped early"


def test_eval_only_folder_and_outputs_path(tmp_path, synthetic_root):
    root = tmp_path / "evalonly"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "eval_test.json").write_text(json.dumps(_eval_payload("test", TEST_RECORDS, "/x")))
    run = load_run(root / "outputs")  # the outputs/ folder is accepted too
    assert run.root == root and run.epochs == []
    files = build_report([root], tmp_path / "out")
    report = json.loads(files.json.read_text())
    assert report["runs"][0]["status"] == "no training"
    assert {p["key"] for p in report["plots"]} == set()  # nothing to plot: said in the report
    assert "Plot not drawn" in files.markdown.read_text()


def test_not_a_run_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_run"):
        load_runs([tmp_path / "missing_run"])
    (tmp_path / "notarun" / "outputs").mkdir(parents=True)
    (tmp_path / "notarun" / "outputs" / "something.txt").write_text("x")
    with pytest.raises(NotARunError, match=r"notarun is not a modlisa run folder"):
        build_report([tmp_path / "notarun"])
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="file.txt"):
        load_run(tmp_path / "file.txt")


def test_cli_and_script_wrapper(tmp_path, synthetic_root, capsys):
    a = write_run(tmp_path / "a", data_root=synthetic_root, epochs=2)
    b = write_run(tmp_path / "b", data_root=synthetic_root, epochs=1)
    assert main_analyze([str(a), str(b), "--out", str(tmp_path / "cli"), "--title", "My runs"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (tmp_path / "cli" / "report.md").read_text().startswith("# My runs")
    script = [sys.executable, str(REPO / "scripts" / "analyze_metrics.py")]
    ok = subprocess.run([*script, str(a), "--out", str(tmp_path / "script")], capture_output=True, text=True,
                        env=ENV, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "script" / "report.html").is_file() and (tmp_path / "script" / "report.json").is_file()
    bad = subprocess.run([*script, str(tmp_path / "nope")], capture_output=True, text=True, env=ENV, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------- headless browser
def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


def test_html_renders_in_headless_chromium(tmp_path, synthetic_root):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (Debian: apt-get install chromium) - HTML not rendered")
    a = write_run(tmp_path / "a", data_root=synthetic_root, epochs=3)
    b = write_run(tmp_path / "b", data_root=synthetic_root, epochs=2, loss_offset=0.5)
    files = build_report([a, b], tmp_path / "report")
    shot = tmp_path / "shot.png"
    result = _chromium([f"--screenshot={shot}", "--window-size=1200,3000", files.html.as_uri()], tmp_path)
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as img:
        grey = img.convert("L")
        lo, hi = grey.getextrema()
        assert hi - lo > 100 and len(grey.getcolors(1 << 16) or []) > 20  # text, tables and plots, not blank
    probe = tmp_path / "probe.html"  # the report plus a script writing each image's decoded width
    script = ("<script>window.addEventListener('load', () => { document.body.setAttribute('data-widths', "
              "Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1).join(',')); });</script>")
    probe.write_text(files.html.read_text().replace("</body>", script + "</body>"))
    dom = _chromium(["--dump-dom", "--virtual-time-budget=5000", probe.as_uri()], tmp_path).stdout
    match = re.search(r'data-widths="([^"]*)"', dom)
    assert match, dom[-2000:]
    widths = [int(w) for w in match.group(1).split(",")]
    assert len(widths) == len(files.plots) and all(w > 300 for w in widths)


# ---------------------------------------------------------------------- the real writer
@pytest.mark.slow
def test_real_tiny_run_matches_reader(tmp_path):
    from modlisa.config import TrainingConfig
    from modlisa.engine.run_eval import run_eval
    from modlisa.engine.train import train
    from modlisa.synthetic import make_dataset

    data = tmp_path / "data"
    make_dataset(data, seed=0, num_train=2, num_val=2, num_test=2, image_size=64, progress=False)
    cfg = TrainingConfig(data_root=str(data), output_dir=str(tmp_path / "run"), model="tiny", img_size=64,
                         sam_image_size=64, batch_size=1, num_epochs=2, steps_per_epoch=1, learning_rate=1e-3,
                         warmup_steps=1, use_mixed_precision=False, cpu=True, log_every_steps=1, seed=3,
                         queries_per_image=1)
    summary = train(cfg.validate())
    for split in ("val", "test"):
        run_eval(str(tmp_path / "run"), None, split, None)
    run_eval(str(tmp_path / "run"), None, "test", None, mode="generate", max_new_tokens=4)
    files = build_report([tmp_path / "run"])
    report = json.loads(files.json.read_text())
    (s,) = report["runs"]
    assert s["status"] == "finished" and s["epochs_done"] == 2
    assert all("warns:" in n for n in s["notes"])  # only the eval sanity warnings of an untrained model
    assert s["data"]["kind"] == "synthetic"
    assert s["best_epoch"]["epoch"] == summary["best_epoch"]
    assert s["best_epoch"]["val_giou"] == pytest.approx(summary["best_val_giou"])
    written = json.loads((tmp_path / "run" / "outputs" / "eval_test.json").read_text())
    assert s["eval"]["test_overall"]["giou"] == pytest.approx(written["giou"])
    assert s["eval"]["test_overall"]["num_queries"] == 2
    assert s["predictions"]["test"]["matches_eval"] is True and s["predictions"]["val"]["matches_eval"] is True
    assert s["predictions"]["test_generate"]["matches_eval"] is True
    generated = json.loads((tmp_path / "run" / "outputs" / "eval_test_generate.json").read_text())
    assert s["eval"]["generate"]["test"]["overall"]["seg_rate"] == pytest.approx(generated["seg_rate"])
    assert s["eval"]["test_overall"]["empty_giou"] == pytest.approx(written["empty_baseline"]["giou"])
    assert [r["epoch"] for r in s["epochs"]] == [1, 2]
    for key in ("train_loss", "val_loss", "iter_per_sec", "samples_per_sec", "peak_memory_gb"):
        assert all(isinstance(r[key], float) and math.isfinite(r[key]) for r in s["epochs"]), key
    assert s["benchmark"]["peak_memory_kind"] == "cpu_peak_rss"
    assert [p["global_step"] for p in s["steps"]] == [1, 2]
    assert {p.name for p in files.plots} == {"loss_per_epoch.png", "loss_per_step.png", "iou_per_epoch.png",
                                             "loss_terms_per_step.png", "lr_grad_norm_per_step.png",
                                             "query_dependence.png", "throughput_per_epoch.png", "memory_per_epoch.png"}
    assert files.html.read_text().count("data:image/png;base64,") == 8
    assert files.pictures == [] and "--split test --save_masks 4`" in files.markdown.read_text()  # run_eval: none
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # analyze reads outputs/ only
    assert build_report([tmp_path / "run"], tmp_path / "again").json.is_file()
