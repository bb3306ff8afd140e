"""Issue 13, beyond the corpus: pickle payloads in every file a command reads, the run-folder lock, failed
writes (disk full and other OS errors), config changes on resume, and the small items of point 10."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from modlisa.cli import main
from modlisa.engine import checkpoint as ckpt
from modlisa.weights import find_best, write_manifest
from reliability_helpers import (
    CPU,
    MARKER,
    _copy_run,
    _run_config,
    payload_bytes,
    run_cli,
    stderr_lines,
    torch_payload,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- payloads in every file read
def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS")


def _plant(path: Path) -> None:
    """Replace ``path`` by a pickle payload (a torch zip for torch files, raw pickle bytes otherwise)."""
    if path.suffix in (".bin", ".pkl", ".pt"):
        torch_payload(path)
    else:
        path.unlink()
        path.write_bytes(payload_bytes())


def test_a_payload_in_any_file_a_command_reads_never_runs(checkpoint_run, tmp_path, capsys):
    """Every file of checkpoints/last, the best model, the export and a legacy .pt: replaced by a pickle payload
    (and the manifest recomputed, so the payload reaches the reader) -> exit 2, one line, nothing runs."""
    data = checkpoint_run["data"]
    image = next((data / "val").glob("*.jpg"))
    predict = ["--image", str(image), "--query", "the thing", "--mode", "teacher", "--out", str(tmp_path / "p")]
    run = checkpoint_run["run"]
    targets = [("last", run / "checkpoints" / "last", f) for f in _files(run / "checkpoints" / "last")]
    targets += [("export", checkpoint_run["export"], f) for f in _files(checkpoint_run["export"])
                if f.endswith((".json", ".safetensors", ".yaml", ".txt", ".jinja"))]
    best = find_best(run / "checkpoints")
    targets += [("best", best.parent, best.name), ("best", best.parent, best.with_suffix(".safetensors").name)]
    targets += [("legacy", checkpoint_run["legacy"].parent, checkpoint_run["legacy"].name)]
    outcomes: dict[str, int] = {}  # a file a loader tolerates when unreadable (exit 0) still runs nothing
    for i, (kind, folder, name) in enumerate(targets):
        work = tmp_path / f"case{i}"
        if kind in ("export", "legacy"):
            shutil.copytree(folder, work, copy_function=os.link)
            command = (["predict", "--checkpoint", str(work), *predict] if kind == "export" else
                       ["eval", "--checkpoint", str(work / name), "--data_root", str(data)])
        else:
            work = _copy_run(run, work) / "checkpoints" / folder.name if kind == "last" else \
                _copy_run(run, work) / "checkpoints"
            command = (["train", "--config", str(_resume_config(tmp_path, work.parents[0] if kind == "last" else
                                                                 work.parent, data)),
                        "--resume_from_checkpoint", str(work)] if kind == "last" else
                       ["eval", "--checkpoint", str(work / name), "--data_root", str(data), "--out",
                        str(tmp_path / "e")])
        _plant(work / name)
        if kind in ("export", "last"):
            write_manifest(work)
        elif name.endswith(".safetensors"):  # the metadata's checksum is rewritten as well
            meta = json.loads((work / Path(name).with_suffix(".json").name).read_text())
            from modlisa.weights import sha256_file

            meta["sha256"] = sha256_file(work / name)
            meta_path = work / Path(name).with_suffix(".json").name
            meta_path.unlink()
            meta_path.write_text(json.dumps(meta))
        code, _, err = run_cli(capsys, command)
        assert not MARKER.exists(), (kind, name)
        assert "Traceback" not in err, (kind, name, err)
        outcomes[f"{kind}:{name}"] = code
        if code != 0 or name.endswith((".safetensors", ".bin", ".pkl", "trainer_state.json")) or kind == "best":
            assert code == 2, (kind, name, err)
            assert len([line for line in stderr_lines(err) if "error:" in line]) == 1, (kind, name, err)
    print("payload outcomes (exit code per file):", json.dumps(outcomes, indent=1))
    assert len(outcomes) >= 20


def _resume_config(tmp_path: Path, run: Path, data: Path) -> Path:
    path = tmp_path / f"{run.parent.name}.yaml"
    path.write_text(yaml.safe_dump(asdict(_run_config(data, run))))
    return path


def test_no_unsafe_loading_in_the_source():
    for path in (REPO / "src").rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text and "pickle.load" not in text, path


# ---------------------------------------------------------------------- the run-folder lock
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from modlisa.engine.run_folder import RunFolderLock
    lock = RunFolderLock(Path(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def live_run(checkpoint_run, tmp_path):
    """A copy of the run folder whose lock a real second process holds."""
    run = _copy_run(checkpoint_run["run"], tmp_path / "run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    yield run, proc
    proc.kill()
    proc.wait(timeout=30)


def test_train_resume_and_overwrite_refuse_a_live_run(live_run, checkpoint_run, tmp_path, capsys):
    run, proc = live_run
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(asdict(_run_config(checkpoint_run["data"], run))))
    for extra in (["--resume_from_checkpoint", "latest"], ["--overwrite_output_dir", "true"], []):
        code, _, err = run_cli(capsys, ["train", "--config", str(config), *extra])
        assert code == 5 and "Traceback" not in err, err
        lines = [line for line in stderr_lines(err) if line.startswith("modlisa ") or "rror" in line]
        assert len(lines) == 1 and f"PID {proc.pid}" in lines[0] and "is in use by a live run" in lines[0]
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before  # nothing deleted or rewritten


def test_a_stale_lock_is_taken_over(checkpoint_run, tmp_path, capsys, caplog):
    run = _copy_run(checkpoint_run["run"], tmp_path / "run")
    (run / ".modlisa.lock.json").write_text(json.dumps({"pid": 999_999_99, "host": os.uname().nodename,
                                                        "started": "yesterday"}))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(asdict(_run_config(checkpoint_run["data"], run))))
    with caplog.at_level(logging.WARNING):
        code, out, err = run_cli(capsys, ["train", "--config", str(config), "--resume_from_checkpoint", "latest"])
    assert code == 0, err
    assert "stale lock of PID 99999999" in caplog.text and "that process is gone" in caplog.text
    assert not (run / ".modlisa.lock.json").exists()  # released at the end


# ---------------------------------------------------------------------- failed writes
def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def _failing(fn, match, after: int):
    """``fn`` that raises ENOSPC (after writing a partial temp file where it has one) on the calls whose
    path arguments ``match``, from the ``after + 1``-th such call on."""
    seen = {"n": 0}

    def wrapped(*args, **kwargs):
        paths = [str(a) for a in args[:2] if isinstance(a, (str, Path))]
        if any(match(p) for p in paths):
            seen["n"] += 1
            if seen["n"] > after:
                for p in paths:
                    if ".tmp" in p:
                        Path(p).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return fn(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("where", ["last", "best", "metrics", "log"])
def test_disk_full_at_a_write_is_one_line_exit_4_and_keeps_the_last_good_checkpoint(where, good_root, tmp_path,
                                                                                     capsys, monkeypatch):
    """ENOSPC injected into one kind of write after the first checkpoint (step 1) exists: exit 4, one line
    naming the reason and the fix, no temporary file left, the step-1 checkpoint still good, and the run
    resumes from it."""
    import builtins

    import torch

    import modlisa.atomic
    import modlisa.weights.files as files

    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(asdict(_run_config(good_root, run))))  # 2 steps, saves after each
    if where == "last":  # Accelerate's optimizer.bin of the second save of last/
        monkeypatch.setattr(torch, "save", _failing(torch.save, lambda p: "last.tmp" in p and "optimizer" in p, 1))
    elif where == "best":  # the safetensors file of the first best model
        monkeypatch.setattr(files, "save_file", _failing(files.save_file, lambda p: "best_model" in p, 0))
    elif where == "metrics":  # the fsync of metrics_epoch_1.json
        monkeypatch.setattr(modlisa.atomic, "fsync_file",
                            _failing(modlisa.atomic.fsync_file, lambda p: "metrics_epoch_1" in p, 0))
    else:  # the second line of train_log.jsonl
        monkeypatch.setattr(modlisa.atomic, "open", _failing(builtins.open, lambda p: "train_log" in p, 1),
                            raising=False)
    code, _, err = run_cli(capsys, ["train", "--config", str(config)])
    monkeypatch.undo()
    assert code == 4 and "Traceback" not in err, err
    lines = [line for line in stderr_lines(err) if line.startswith("modlisa ") or "rror" in line]
    assert len(lines) == 1 and "no space left on device (ENOSPC)" in lines[0] and "free disk space" in lines[0]
    assert _temp_files(run) == []
    good = ckpt.find_latest(run / "checkpoints")
    assert good is not None and ckpt.read_trainer_state(good).global_step >= 1
    code, out, err = run_cli(capsys, ["train", "--config", str(config), "--resume_from_checkpoint", "latest"])
    assert code == 0 and "Resumed from" in out, err


def test_a_read_only_folder_is_a_write_error_too(tmp_path, capsys, monkeypatch):
    from modlisa.atomic import WriteError, atomic_write_text

    def erofs(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", erofs)
    with pytest.raises(WriteError, match=r"x\.json: cannot write: read-only file system \(EROFS\); make the folder"):
        atomic_write_text(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- point 10 and resume records
def test_summary_after_resume_lists_every_epoch_and_changes_are_recorded(good_root, tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(asdict(_run_config(good_root, run, num_epochs=2, stop_after_steps=3))))
    assert main(["train", "--config", str(config)]) == 0
    code, out, err = run_cli(capsys, ["train", "--config", str(config), "--resume_from_checkpoint", "latest",
                                      "--stop_after_steps", "100", "--learning_rate", "0.002",
                                      "--allow_config_change", "true"])
    assert code == 0, err
    summary = json.loads((run / "outputs" / "train_summary.json").read_text())
    assert [r["epoch"] for r in summary["epochs"]] == [1, 2]
    changes = json.loads((run / "outputs" / "config_changes.json").read_text())
    assert changes[0]["changes"] == {"learning_rate": {"checkpoint": 0.001, "new": 0.002}}
    state = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["scheduler"]["base_lrs"] == [0.002] and state["config"]["learning_rate"] == 0.002


def test_the_best_model_is_picked_by_number_not_text_order(tmp_path):
    for epoch in (2, 9, 10):
        (tmp_path / f"best_model_epoch_{epoch}.json").write_text("{}")
    (tmp_path / "best_model_epoch_3.pt").write_bytes(b"")
    assert find_best(tmp_path).name == "best_model_epoch_10.json"


def test_no_val_split_ends_with_an_honest_message(good_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(good_root, data, copy_function=os.link)
    shutil.rmtree(data / "val")
    code, out, err = run_cli(capsys, ["train", "--data_root", str(data), "--output_dir", str(tmp_path / "run"), *CPU,
                                      "--img_size", "32", "--sam_image_size", "32", "--num_epochs", "1",
                                      "--batch_size", "2"])
    assert code == 0, err
    assert "no val split: no validation, no best model" in out and "-1.0000" not in out


def test_a_bad_explanatory_file_is_reported_as_such(good_root, tmp_path, caplog):
    from modlisa.data.dataset import ReasonSegDataset

    data = tmp_path / "data"
    shutil.copytree(good_root, data, copy_function=os.link)
    explanatory = data / "explanatory" / "train.json"
    explanatory.unlink()
    explanatory.write_text(json.dumps([{"image": "x.jpg", "outputs": "it is the [SEG] thing", "json": "x.json"}]))
    identity = lambda image: (__import__("torch").zeros(3, 8, 8), (8, 8))  # noqa: E731
    with caplog.at_level(logging.WARNING):
        ReasonSegDataset(data, "train", identity, lambda image: None, train=True, strict=False)
    assert "skipped 0 annotation" not in caplog.text
    assert "bad_explanatory: explanations not used" in caplog.text and "special token [SEG]" in caplog.text


def test_the_exit_code_table_documents_every_code():
    text = (REPO / "docs" / "TROUBLESHOOTING.md").read_text()
    table = text[text.index("## Exit codes"):text.index("## 1.")]
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 130 |", "| 143 |"):
        assert code in table, code
