"""``modlisa check-data``: exit codes, the human table, --json, layouts, missing splits, bad files."""

from __future__ import annotations

import json

import pytest

from modlisa.cli.check_data import main as main_check_data
from modlisa.data.check import check_dataset, format_report
from reasonseg_fixtures import make_reasonseg, write_bad_files


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main_check_data([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("layout", "explanatory"), [("nested", "standard"), ("flat", "seed")])
def test_clean_dataset_passes_in_both_layouts(tmp_path, capsys, layout, explanatory):
    make_reasonseg(tmp_path, layout=layout, explanatory=explanatory)
    code, out, _ = run(capsys, str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["errors"] == 0
    train = report["splits"]["train"]
    assert (train["images"], train["usable"], train["queries"]) == (3, 3, 15)
    assert (train["short"], train["long"], train["ignore_regions"], train["empty_masks"]) == (2, 1, 1, 0)
    assert report["splits"]["test"]["queries"] == 2
    expected_file = "explanatory/train.json" if explanatory == "standard" else "train.json"
    assert report["explanatory"]["file"].endswith(expected_file) and report["explanatory"]["entries"] == 1
    assert report["missing_splits"] == []


def test_human_table_lists_counts_and_verdict(tmp_path, capsys):
    make_reasonseg(tmp_path)
    code, out, _ = run(capsys, str(tmp_path))
    assert code == 0
    assert "split" in out and "usable" in out and "ignore_regions" in out
    assert out.strip().endswith("OK: 0 error(s), 0 warning(s)")
    train_row = next(line for line in out.splitlines() if line.startswith("train"))
    assert train_row.split()[1:4] == ["3", "3", "15"]


def test_bad_files_fail_with_every_problem_named(tmp_path, capsys):
    make_reasonseg(tmp_path)
    cases = write_bad_files(tmp_path / "ReasonSeg" / "train")
    code, out, err = run(capsys, str(tmp_path), "--json")
    assert code == 1 and "Traceback" not in err
    report = json.loads(out)
    problems = report["splits"]["train"]["problems"]
    assert report["ok"] is False and report["errors"] == report["splits"]["train"]["errors"] > 0
    truncated = [p for p in problems if cases["truncated_image"] in p["file"]]
    assert [(p["kind"], p["severity"]) for p in truncated] == [("unreadable_image", "error")]
    assert "truncated" in truncated[0]["message"]
    for kind in ("missing_image", "malformed_json", "no_text", "no_target", "few_points", "nonfinite_points",
                 "out_of_bounds", "bad_field", "unknown_label", "non_polygon", "missing_json"):
        assert kind in {p["kind"] for p in problems}, kind
    usable = report["splits"]["train"]["usable"]
    assert usable == 3 + 5  # good files + cp1252, few_points_two, non_polygon, slightly_outside, unknown_label
    code, out, _ = run(capsys, str(tmp_path), "--splits", "train")
    assert code == 1 and "FAILED" in out
    assert f"{cases['out_of_bounds']}.json: out_of_bounds: shapes[0]" in out


def test_full_decode_shows_a_progress_bar_on_stderr_of_a_terminal_only(tmp_path, capsys, monkeypatch):
    make_reasonseg(tmp_path, splits=("val",), explanatory=None)
    assert main_check_data([str(tmp_path), "--splits", "val"]) == 0
    out, err = capsys.readouterr()
    assert "check val" not in err and "check val" not in out  # piped: no bar frames
    monkeypatch.setattr("modlisa.console.bars_enabled", lambda stream=None: True)  # as on a terminal
    assert main_check_data([str(tmp_path), "--splits", "val"]) == 0
    out, err = capsys.readouterr()
    assert "check val" in err and "check val" not in out


def test_summary_counts_every_error(tmp_path, capsys):
    code, out, _ = run(capsys, str(tmp_path / "absent"))
    assert code == 1 and out.rstrip().endswith("FAILED: 1 error(s), 0 warning(s)")
    report = check_dataset(tmp_path / "absent", progress=False)
    assert report["errors"] == 1 and report["ok"] is False
    code, out, _ = run(capsys, str(tmp_path), "--splits", "val")
    assert code == 1 and out.rstrip().endswith("FAILED: 1 error(s), 0 warning(s)")  # no_split


def test_missing_splits_are_reported_not_fatal(tmp_path, capsys):
    make_reasonseg(tmp_path, splits=("train",))
    code, out, _ = run(capsys, str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 0 and report["missing_splits"] == ["val", "test"]
    assert report["splits"]["val"]["missing"] is True
    code, out, _ = run(capsys, str(tmp_path))
    assert code == 0 and "val       missing" in out


def test_no_split_at_all_is_an_error(tmp_path, capsys):
    code, out, _ = run(capsys, str(tmp_path), "--splits", "val", "test")
    assert code == 1 and "no_split" in out
    code, out, _ = run(capsys, str(tmp_path / "absent"))
    assert code == 1 and "missing_root" in out


def test_explanatory_entries_pointing_nowhere_are_warnings(tmp_path, capsys):
    make_reasonseg(tmp_path, splits=("train",))
    path = tmp_path / "ReasonSeg" / "explanatory" / "train.json"
    entries = json.loads(path.read_text(encoding="utf-8"))
    entries.append({"query": "q", "outputs": "o", "image": "ghost.jpg", "json": "ghost.json"})
    path.write_text(json.dumps(entries), encoding="utf-8")
    report = check_dataset(tmp_path, ["train"], progress=False)
    kinds = [(p["kind"], p["severity"]) for p in report["explanatory"]["problems"]]
    assert kinds == [("explanation_missing_file", "warning")] * 2 and report["ok"] is True
    assert "ghost.jpg" in format_report(report)


def test_malformed_explanatory_file_is_an_error_reported_once(tmp_path, capsys):
    make_reasonseg(tmp_path, splits=("train", "val"))
    (tmp_path / "ReasonSeg" / "explanatory" / "train.json").write_text("[{", encoding="utf-8")
    code, out, _ = run(capsys, str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 1 and report["errors"] == 1
    assert [p["kind"] for p in report["explanatory"]["problems"]] == ["bad_explanatory"]
    assert report["splits"]["train"]["problems"] == []
