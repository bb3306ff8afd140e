"""The report's tables, built from run summaries (``summary.run_summary``) as rows of strings.

A ``Table`` is format-free; ``render`` turns it into Markdown or HTML. IoU figures are shown as
percentages with one decimal (x100), like LISA's tables; a missing value is shown as an em dash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from modlisa.report.lisa_reference import (
    COLUMNS,
    FT_NOTE,
    REFER_COLUMNS,
    REFER_SOURCE,
    REFER_TABLE,
    SOURCE,
    reference_rows,
)

MISSING = "—"
MEMORY_KINDS = {
    "cpu_peak_rss": "peak resident memory of the whole process (CPU; cannot be reset between epochs)",
    "cuda_max_allocated": "torch.cuda.max_memory_allocated (tensors only, reset each epoch)",
}


@dataclass
class Table:
    """A titled table: ``rows`` of cell strings under ``columns``; ``bold_rows`` are emphasised."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    bold_rows: set[int] = field(default_factory=set)
    align_numbers: bool = True  # HTML: right-align numeric cells (off for tables of mixed rows)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}


# ---------------------------------------------------------------------- cell formatting
def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal ("44.4"); MISSING for None."""
    if value is None:
        return MISSING
    return f"{100 * float(value):.1f}" if math.isfinite(float(value)) else str(value)


def num(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals ("nan"/"inf" kept), integers as they are; MISSING for None."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def pair(cell: dict[str, Any] | None) -> str:
    """A result cell as "gIoU / cIoU" in percent."""
    return MISSING if cell is None else f"{pct(cell['giou'])} / {pct(cell['ciou'])}"


def memory(gb: float | None, kind: str | None) -> str:
    return MISSING if gb is None else f"{gb:.2f} GB ({kind or 'kind unknown'})"


# ---------------------------------------------------------------------- per run
def progression_table(s: dict[str, Any]) -> Table:
    """Per epoch: step, lr, train loss/gIoU/cIoU, val loss/gIoU/cIoU; the best epoch in bold."""
    best = (s["best_epoch"] or {}).get("epoch")
    columns = ["Epoch", "Step", "LR", "Train loss", "Train gIoU", "Train cIoU", "Val loss", "Val gIoU", "Val cIoU"]
    rows, bold = [], set()
    for i, r in enumerate(s["epochs"]):
        mark = " (best)" if r["epoch"] == best else ""
        rows.append([f"{r['epoch']}{mark}", num(r["global_step"]), num(r["lr"], 6), num(r["train_loss"]),
                     pct(r["train_giou"]), pct(r["train_ciou"]), num(r["val_loss"]), pct(r["val_giou"]),
                     pct(r["val_ciou"])])
        if r["epoch"] == best:
            bold.add(i)
    notes = ["gIoU / cIoU in %; the \"IoU\" of LISA's script equals gIoU. Best epoch = highest val gIoU (kept by training)."]
    summary_epoch = (s["best_epoch"] or {}).get("summary_epoch")
    if best is not None and summary_epoch not in (None, best):
        notes.append(f"train_summary.json names epoch {summary_epoch} as best (a resumed or restarted run?).")
    return Table(f"Training progression: {s['name']}", columns, rows, notes, bold)


def benchmark_table(s: dict[str, Any]) -> Table:
    """Per epoch speed and memory, then the mean over epochs."""
    columns = ["Epoch", "Iter/s", "Avg iter time (s)", "Median iter time (s)", "Epoch time (s)", "Samples/s",
               "Peak memory"]
    rows = [[num(r["epoch"]), num(r["iter_per_sec"], 3), num(r["avg_iter_time"], 3), num(r["median_iter_time"], 3),
             num(r["epoch_time"], 1), num(r["samples_per_sec"], 2), memory(r["peak_memory_gb"], r["peak_memory_kind"])]
            for r in s["epochs"]]
    b = s["benchmark"]
    notes = []
    if b is not None:
        rows.append(["mean", num(b["iter_per_sec"], 3), num(b["avg_iter_time"], 3), num(b["median_iter_time"], 3),
                     num(b["epoch_time"], 1), num(b["samples_per_sec"], 2), memory(b["peak_memory_gb"],
                                                                                   b["peak_memory_kind"])])
        notes.append(f"Total training time {b['total_train_time']:.1f} s over {b['epochs']} epoch(s); "
                     f"without epoch 1 (warm-up): {num(b['iter_per_sec_steady'], 3)} iter/s, "
                     f"{num(b['samples_per_sec_steady'], 2)} samples/s. An iteration = one optimizer step; "
                     "samples = images (all processes). Mean-row memory = the maximum over epochs; median "
                     "iteration time = over all logged steps.")
        for kind in (b["peak_memory_kind"] or "").split(", "):
            if kind in MEMORY_KINDS:
                notes.append(f"{kind}: {MEMORY_KINDS[kind]}.")
    return Table(f"Benchmark: {s['name']}", columns, rows, notes, {len(rows) - 1} if b else set())


def eval_table(s: dict[str, Any]) -> Table:
    """LISA's evaluation rows (val, test short / long / overall; teacher mode), then generate-mode rows.

    Columns: gIoU, cIoU in %, query count, the empty-mask baseline gIoU, the [SEG] rate (generate mode) and
    the source file.
    """
    e = s["eval"]
    entries = [("val", e["val"], e["val_source"]), ("test short", e["test_short"], e["test_source"]),
               ("test long", e["test_long"], e["test_source"]), ("test overall", e["test_overall"], e["test_source"])]
    for split, cells in e["generate"].items():
        names = ["overall"] if split == "val" else ["short", "long", "overall"]
        entries += [(f"{split}{'' if n == 'overall' and split == 'val' else ' ' + n} (generate)", cells[n],
                     f"eval_{split}_generate.json") for n in names]
    rows = [[label, pct(c and c["giou"]), pct(c and c["ciou"]), num(c and c["num_queries"]),
             pct(c and c["empty_giou"]), pct(c and c.get("wrong_giou")), pct(c and c.get("grounding")),
             pct(c and c["seg_rate"]), source or "not evaluated"]
            for label, c, source in entries]
    notes = [f"Data: {s['data']['detail']}.",
             "Empty-mask gIoU: the score of predicting nothing for every query (queries whose target is empty "
             "score 1); a model should beat it. Wrong-query gIoU: the same images asked another image's query; "
             "a model that reads its query scores far lower there, a query-blind one the same (docs/EVALUATION.md). "
             "Grounding: share of queries whose mask overlaps the target more than any other shape (data that "
             "lists the other shapes). [SEG] rate: share of free answers (generate mode) with a [SEG]."]
    columns = ["Split", "gIoU (%)", "cIoU (%)", "Queries", "Empty-mask gIoU (%)", "Wrong-query gIoU (%)",
               "Grounding (%)", "[SEG] rate (%)", "Source"]
    return Table(f"Evaluation: {s['name']}", columns, rows, notes)


def predictions_table(s: dict[str, Any]) -> Table | None:
    """Per split with predictions_{split}.jsonl: counts, median IoU, IoU >= 0.5 share, recomputation check."""
    if not s["predictions"]:
        return None
    rows = []
    for split, p in s["predictions"].items():
        check = {True: "yes", False: "NO: differs from eval json", None: "no eval json"}[p["matches_eval"]]
        rows.append([split, num(p["queries"]), num(p["short"]), num(p["long"]), pct(p["median_iou"]),
                     pct(p["iou_at_least_0_5"]), pct(p["recomputed_giou"]), pct(p["recomputed_ciou"]), check])
    columns = ["Split", "Queries", "Short", "Long", "Median IoU (%)", "IoU ≥ 50% (% of queries)",
               "gIoU from I,U (%)", "cIoU from I,U (%)", "Matches eval json"]
    return Table(f"Per-query predictions: {s['name']}", columns, rows,
                 ["Recomputed from the per-query I and U of predictions_<split>.jsonl with LISA's formulas."])


def bench_json_table(s: dict[str, Any]) -> Table | None:
    """The scalar figures of outputs/bench.json (written by `modlisa bench`)."""
    if not s["bench_json"]:
        return None
    rows = [[key, num(value)] for key, value in s["bench_json"].items()]
    return Table(f"bench.json: {s['name']}", ["Key", "Value"], rows,
                 ["Top-level numbers of outputs/bench.json (nested ones as parent.key), as written."],
                 align_numbers=False)


# ---------------------------------------------------------------------- across runs
def runs_table(summaries: list[dict[str, Any]]) -> Table:
    """One column per run: status, data, model, schedule, best epoch, results and speed."""
    def get(s: dict[str, Any], key: str) -> Any:
        return s["config"].get(key)

    def best(s: dict[str, Any]) -> str:
        b = s["best_epoch"]
        return MISSING if b is None else f"{b['epoch']} ({pct(b['val_giou'])} / {pct(b['val_ciou'])})"

    def bench(s: dict[str, Any], key: str, digits: int) -> str:
        return num((s["benchmark"] or {}).get(key), digits)

    spec: list[tuple[str, Any]] = [
        ("Status", lambda s: s["status"]),
        ("Data", lambda s: s["data"]["detail"]),
        ("Epochs done / planned", lambda s: f"{s['epochs_done']} / {num(s['epochs_planned'])}"),
        ("Optimizer steps", lambda s: num(s["global_step"])),
        ("Model preset", lambda s: num(get(s, "model"))),
        ("Image size (vision / SAM)", lambda s: f"{num(get(s, 'img_size'))} / {num(get(s, 'sam_image_size'))}"),
        ("Batch x accumulation", lambda s: f"{num(get(s, 'batch_size'))} x {num(get(s, 'gradient_accumulation_steps'))}"),
        ("Learning rate", lambda s: num(get(s, "learning_rate"), 6)),
        ("LoRA r / alpha", lambda s: f"{num(get(s, 'lora_r'))} / {num(get(s, 'lora_alpha'))}"
         if get(s, "use_lora") else "off"),
        ("Trained embeddings", lambda s: num(get(s, "train_embeddings"))),
        ("Precision", lambda s: num(get(s, "precision"))),
        ("Best epoch (val gIoU / cIoU %)", best),
        ("Val gIoU / cIoU (%)", lambda s: pair(s["eval"]["val"])),
        ("Test short (%)", lambda s: pair(s["eval"]["test_short"])),
        ("Test long (%)", lambda s: pair(s["eval"]["test_long"])),
        ("Test overall (%)", lambda s: pair(s["eval"]["test_overall"])),
        ("Iter/s (mean)", lambda s: bench(s, "iter_per_sec", 3)),
        ("Samples/s (mean)", lambda s: bench(s, "samples_per_sec", 2)),
        ("Median iter time (s)", lambda s: bench(s, "median_iter_time", 3)),
        ("Epoch time (s, mean)", lambda s: bench(s, "epoch_time", 1)),
        ("Peak memory", lambda s: memory((s["benchmark"] or {}).get("peak_memory_gb"),
                                         (s["benchmark"] or {}).get("peak_memory_kind"))),
    ]
    rows = [[label, *[fn(s) for s in summaries]] for label, fn in spec]
    notes = ["Val = eval_val.json, else the best epoch's validation during training. Memory kinds differ between "
             "CPU and GPU runs: compare like with like."]
    return Table("Runs side by side", ["", *[s["name"] for s in summaries]], rows, notes, align_numbers=False)


def lisa_table(summaries: list[dict[str, Any]]) -> Table:
    """LISA's published ReasonSeg table (``lisa_reference``) with this report's runs appended, gIoU / cIoU in %."""
    columns = ["Method", "Data"]
    for _, title in COLUMNS:
        columns += [f"{title} gIoU", f"{title} cIoU"]
    rows = []
    for ref in reference_rows():
        cells = []
        for key, _ in COLUMNS:
            value = ref.cell(key)
            cells += [MISSING, MISSING] if value is None else [f"{value[0]:.1f}", f"{value[1]:.1f}"]
        rows.append([ref.method, "ReasonSeg (published)" if not ref.peer else "ReasonSeg (published, later peer)",
                     *cells])
    first_ours = len(rows)
    for s in summaries:
        cells = []
        for key, _ in COLUMNS:
            cell = s["eval"][key]
            cells += [pct(cell and cell["giou"]), pct(cell and cell["ciou"])]
        rows.append([f"ours: {s['name']}", _data_label(s), *cells])
    notes = [
        f"Published rows: {SOURCE}. {FT_NOTE}",
        "Our rows are measured on the data named in their Data column with LISA's protocol (teacher-forced, "
        "first query, logits > 0). They are comparable with the published rows ONLY when that data is the "
        "official ReasonSeg val/test split; synthetic or other data is NOT comparable.",
    ]
    return Table("Comparison with LISA's published results", columns, rows, notes,
                 set(range(first_ours, len(rows))))


def mixture_table(s: dict[str, Any]) -> Table:
    """A training mixture's per-dataset images, share and losses of each epoch (``summary.mixture_rows``)."""
    def num(value: Any, digits: int) -> str:
        return MISSING if value is None else f"{value:.{digits}f}"

    rows = [[str(r["epoch"]), r["dataset"], num(r["images"], 0), pct(r["share"]), num(r["queries"], 0),
             num(r["masks"], 0), num(r["ce"], 4), num(r["mask_bce"], 4), num(r["mask_dice"], 4)] for r in s["mixture"]]
    shares = ", ".join(f"{k} {100 * v:.1f} %" for k, v in (s.get("mixture_shares") or {}).items())
    notes = ["Images drawn from each dataset in the epoch, their share of the epoch's images, and each dataset's "
             "losses (CE per learned token, mask BCE / Dice per mask)."] + ([f"Configured shares: {shares}."]
                                                                           if shares else [])
    return Table(f"Training mixture of {s['name']}", ["Epoch", "Dataset", "Images", "Share %", "Queries", "Masks",
                                                      "CE", "Mask BCE", "Mask Dice"], rows, notes)


def refer_table(summaries: list[dict[str, Any]]) -> Table:
    """The published referring-segmentation cIoU (``lisa_reference.REFER_TABLE``) with our runs' ``modlisa eval
    --dataset refcoco|refcoco+|refcocog`` results appended (cIoU %, gIoU in brackets)."""
    columns = ["Method", *[f"{d} {s}" for d, s in REFER_COLUMNS]]
    rows = [[ref.method, *[MISSING if ref.ciou.get(col) is None else f"{ref.ciou[col]:.1f}" for col in REFER_COLUMNS]]
            for ref in REFER_TABLE]
    first_ours = len(rows)
    for s in summaries:
        refer = s.get("refer") or {}
        if refer:
            cells = []
            for d, split in REFER_COLUMNS:
                cell = refer.get(f"{d} {split}")
                cells.append(MISSING if not cell else f"{pct(cell['ciou'])} ({pct(cell['giou'])})")
            rows.append([f"ours: {s['name']}", *cells])
    notes = [f"Published rows: {REFER_SOURCE}",
             "cIoU in % (our rows: gIoU in brackets), LISA's protocol: every sentence of every ref is one query. "
             "Our rows are comparable with the published ones only on the official refer files."]
    return Table("Referring segmentation (cIoU)", columns, rows, notes, set(range(first_ours, len(rows))))


def _data_label(s: dict[str, Any]) -> str:
    data = s["data"]
    if data["kind"] == "synthetic":
        return f"SYNTHETIC shapes, not ReasonSeg ({data['root']})"
    if data["kind"] == "reasonseg-format" and data.get("official_counts"):
        return f"{data['root']} (official ReasonSeg file counts)"
    if data["kind"] == "reasonseg-format":
        return f"{data['root']} (ReasonSeg format, not the official split sizes): not comparable"
    return f"unknown ({data['root'] or 'no config'}): not comparable"
