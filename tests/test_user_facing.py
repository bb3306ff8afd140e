"""Papercuts a new user meets: `modlisa --version`, wording that points at files they have, data checked before a
model is built, and runs that record where their data is so that `modlisa eval` works from any folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modlisa.cli import main
from modlisa.config import ConfigError
from reliability_helpers import _run_config

REPO = Path(__file__).resolve().parents[1]
USER_TEXT = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "configs").glob("*.yaml"),
             *(REPO / "src").rglob("*.py"), *(REPO / "scripts").glob("*")]


def test_version_names_modlisa_and_what_it_runs_on(capsys):
    import modlisa

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"modlisa {modlisa.__version__} (torch ") and "transformers " in out
    done = subprocess.run([sys.executable, "-m", "modlisa.cli", "-V"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.startswith("modlisa ")


@pytest.mark.parametrize("pattern", [r"SPEC-LISA", r"\bthe seed\b(?! (of|on|value))", r"\bseed's\b"])
def test_user_facing_text_points_at_files_in_the_repository(pattern):
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in USER_TEXT if path.is_file()
                 for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                 if re.search(pattern, line)]
    assert not offenders, offenders
    assert (REPO / "docs" / "LISA.md").is_file()


def test_data_is_checked_before_the_run_folder_is_prepared_or_a_model_built(tmp_path, monkeypatch, good_root):
    import modlisa.model.factory as factory

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(factory, "build_model", no_model)
    empty = tmp_path / "data"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    from modlisa.data.reasonseg import DataError
    from modlisa.engine.train import train

    with pytest.raises(DataError, match="no usable annotation"):
        train(_run_config(empty, tmp_path / "run").validate())
    assert not (tmp_path / "run" / "outputs").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_run_records_its_data_root_absolute_and_evaluates_from_elsewhere(tmp_path, good_root, monkeypatch):
    from modlisa.engine.train import train

    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(good_root)
    monkeypatch.chdir(work)
    train(_run_config(Path("data"), Path("run")).validate())  # both paths relative to the current folder
    saved = yaml.safe_load((work / "run" / "outputs" / "config.yaml").read_text())
    assert saved["data_root"] == str((work / "data").resolve()) and Path(saved["data_root"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "modlisa.cli", "eval", "--checkpoint", str(work / "run"),
                           "--split", "val", "--out", str(tmp_path / "eval")], capture_output=True, text=True,
                          cwd=elsewhere, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "eval" / "eval_val.json").is_file()


def test_an_old_relative_data_root_gives_a_clear_message(tmp_path, monkeypatch):
    from modlisa.engine.run_eval import recorded_data_root

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"runs/x: its data_root 'data/demo' is relative .* pass --data_root"):
        recorded_data_root("data/demo", "runs/x")
    (tmp_path / "data" / "demo").mkdir(parents=True)
    assert recorded_data_root("data/demo", "runs/x") == "data/demo"
