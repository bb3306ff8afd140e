"""End-to-end training on the synthetic data with the tiny preset: run folder, exact resume, two processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from modlisa.config import TrainingConfig
from modlisa.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, seed=0, num_train=8, num_val=5, num_test=4, image_size=64, progress=False)
    return root


def _free_port() -> int:
    """A free TCP port: a fixed one could join another concurrent torchrun's rendezvous and hang."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_config(data_root: Path, out: Path, **overrides) -> TrainingConfig:
    cfg = TrainingConfig(
        data_root=str(data_root), output_dir=str(out), model="tiny", img_size=64, sam_image_size=64,
        batch_size=2, num_epochs=2, learning_rate=1e-3, warmup_steps=2, use_mixed_precision=False, cpu=True,
        freeze_image_encoder=False, freeze_sam=False, freeze_text_encoder=False, log_every_steps=1, seed=7,
        queries_per_image=2,
    )
    return replace(cfg, **overrides)


def _train(cfg: TrainingConfig) -> dict:
    from modlisa.engine.train import train

    return train(cfg.validate())


def test_run_folder_contract(data_root, tmp_path):
    summary = _train(tiny_config(data_root, tmp_path / "run"))
    out, ck = tmp_path / "run" / "outputs", tmp_path / "run" / "checkpoints"
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == "tiny"
    for epoch in (1, 2):
        record = json.loads((out / f"metrics_epoch_{epoch}.json").read_text())
        assert record["epoch"] == epoch
        for key in ("loss", "iou", "giou", "ciou", "iter_per_sec", "avg_iter_time", "epoch_time", "peak_memory_gb"):
            assert isinstance(record["train"][key], float), key
        assert record["train"]["peak_memory_kind"] == "cpu_peak_rss"
        for key in ("loss", "iou", "giou", "ciou"):
            assert isinstance(record["val"][key], float), key
        assert record["val"]["num_queries"] == 5
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in lines] == list(range(1, 9))
    assert all({"loss", "ce", "mask_bce", "mask_dice", "lr", "grad_norm"} <= set(r) for r in lines)
    bests = sorted(ck.glob("best_model_epoch_*.safetensors"))
    assert len(bests) == 1 and summary["best_checkpoint"] == str(bests[0])
    assert not list(ck.glob("*.pt"))  # no pickle anywhere
    meta = json.loads(bests[0].with_suffix(".json").read_text())
    assert {"sha256", "optimizer", "best_val_giou", "metrics", "config", "epoch"} <= set(meta)
    tensors = load_file(str(bests[0]))
    assert any(k.startswith("model.") for k in tensors) and any(k.startswith("optimizer.state.") for k in tensors)
    assert (ck / "last" / "SHA256SUMS").is_file()
    assert (ck / "last" / "trainer_state.json").is_file()
    state = json.loads((ck / "last" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 8)


@pytest.mark.parametrize("pack_queries", [False, True])  # packing (tests/test_packing.py) keeps resume exact
def test_exact_resume_mid_epoch(data_root, tmp_path, pack_queries):
    straight = _train(tiny_config(data_root, tmp_path / "a", pack_queries=pack_queries))
    # stops inside epoch 2 (4 steps/epoch)
    _train(tiny_config(data_root, tmp_path / "b", stop_after_steps=6, pack_queries=pack_queries))
    state = json.loads((tmp_path / "b" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    resumed = _train(tiny_config(data_root, tmp_path / "b", resume_from_checkpoint="latest",
                                 pack_queries=pack_queries))
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    ma = json.loads((tmp_path / "a" / "outputs" / "metrics_epoch_2.json").read_text())
    mb = json.loads((tmp_path / "b" / "outputs" / "metrics_epoch_2.json").read_text())
    assert ma["val"] == mb["val"]
    for key in ("loss", "giou", "ciou", "ce", "mask_bce", "mask_dice"):
        assert ma["train"][key] == pytest.approx(mb["train"][key], rel=1e-9, abs=1e-12), key
    assert straight["best_val_giou"] == resumed["best_val_giou"]


@pytest.mark.slow
def test_two_processes_really_run(data_root, tmp_path):
    # with the prompt teacher for the first of the 2 steps: its gradients (outside the DDP module) are averaged
    cfg = tiny_config(data_root, tmp_path / "ddp", num_epochs=1, seg_prompt_teacher_fraction=0.5)
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "modlisa.cli", "train",
         "--config", str(config_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "ddp" / "outputs" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2
    checks = summary["rank_param_checksums"]
    assert len(checks) == 2 and checks[0] == checks[1]
    record = json.loads((tmp_path / "ddp" / "outputs" / "metrics_epoch_1.json").read_text())
    assert record["val"]["num_queries"] == 5  # odd count over 2 ranks: each sample exactly once
    # 8 train images, batch 2 per rank, 2 ranks -> 2 optimizer steps in the epoch
    assert summary["global_step"] == 2


# trackers (TensorBoard, MLflow) read back: tests/test_console_tracking.py


@pytest.mark.slow
def test_eval_two_ranks_counts_each_sample_once(data_root, tmp_path):
    """`modlisa eval` under torchrun with 2 ranks and an odd split (5 val images): 5 queries, same metrics."""
    _train(tiny_config(data_root, tmp_path / "run", num_epochs=1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    common = ["-m", "modlisa.cli", "eval", "--checkpoint", str(tmp_path / "run"), "--split", "val"]
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), *common, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert two.returncode == 0, two.stderr[-4000:]
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]
    e2 = json.loads((tmp_path / "two" / "eval_val.json").read_text())
    e1 = json.loads((tmp_path / "one" / "eval_val.json").read_text())
    assert e2["num_processes"] == 2 and e1["num_processes"] == 1
    assert e2["num_queries"] == e1["num_queries"] == 5
    lines = (tmp_path / "two" / "predictions_val.jsonl").read_text().splitlines()
    files = [json.loads(line)["file"] for line in lines]
    assert len(files) == len(set(files)) == 5
    assert e2["giou"] == pytest.approx(e1["giou"], abs=1e-9) and e2["ciou"] == pytest.approx(e1["ciou"], abs=1e-9)


def test_fresh_run_never_mixes_into_an_earlier_run(data_root, tmp_path):
    from modlisa.config import ConfigError

    cfg = tiny_config(data_root, tmp_path / "run", num_epochs=1)
    _train(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        _train(cfg)
    _train(replace(cfg, overwrite_output_dir=True))
    lines = (tmp_path / "run" / "outputs" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_step"] for line in lines] == [1, 2, 3, 4]  # only the new run's steps


@pytest.mark.slow
def test_sigterm_saves_last_and_resumes(data_root, tmp_path):
    """A preempted job (SIGTERM) saves checkpoints/last at the next optimizer step and exits 143; resume goes on."""
    import signal
    import time

    cfg = tiny_config(data_root, tmp_path / "run", num_epochs=30)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "modlisa.cli", "train", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    log = tmp_path / "run" / "outputs" / "train_log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-3000:]
    assert "Training stopped (sigterm)" in out and "Traceback" not in err
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    summary = json.loads((tmp_path / "run" / "outputs" / "train_summary.json").read_text())
    assert summary["stop_reason"] == "sigterm" and state["global_step"] == summary["global_step"] >= 2
    assert state["global_step"] < 30 * 4  # stopped long before the end
    resumed = _train(replace(cfg, resume_from_checkpoint="latest", stop_after_steps=state["global_step"] + 2))
    assert resumed["global_step"] == state["global_step"] + 2
