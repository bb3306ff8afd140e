"""Session fixtures of the reliability tests: good tiny data and ONE finished tiny run (with its export and a
legacy ``.pt`` best model), built once and only ever copied (hard links) by the tests that damage them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modlisa.cli import main
from modlisa.synthetic import make_dataset
from reliability_helpers import _run_config


@pytest.fixture(scope="session")
def good_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good_data")
    make_dataset(root, seed=0, num_train=4, num_val=1, num_test=1, image_size=64, progress=False)
    return root


@pytest.fixture(scope="session")
def checkpoint_run(tmp_path_factory, good_root) -> dict[str, Path]:
    """A finished tiny run (last = step 2, last.old = step 1, best model of epoch 1), its export and a legacy
    ``.pt`` best model written as older modlisa versions did."""
    from modlisa.engine.train import train

    base = tmp_path_factory.mktemp("ckpt")
    run = base / "run"
    train(_run_config(good_root, run).validate())
    assert main(["export", "--checkpoint", str(run), "--out", str(base / "export")]) == 0
    best = next((run / "checkpoints").glob("best_model_epoch_*.safetensors"))
    meta = json.loads(best.with_suffix(".json").read_text())
    state = {k[len("model."):]: v for k, v in load_file(str(best)).items() if k.startswith("model.")}
    legacy = base / "legacy" / "best_model_epoch_1.pt"
    legacy.parent.mkdir()
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "best_val_giou": 0.1, "epoch": 1,
                "metrics": {}, "config": meta["config"]}, legacy)
    return {"run": run, "export": base / "export", "legacy": legacy, "data": good_root}
