"""Crash safety and honest loading (issue 7.2, 7.4, 13).

A kill at any moment of a checkpoint write leaves a loadable checkpoint that ``latest`` finds; a training
process killed with SIGKILL mid-save and mid-epoch, then resumed, ends with exactly the weights of an
uninterrupted run (CPU fp32); weights that do not match the model are refused with the keys named. The save
points are reached through hooks the tests inject (``checkpoint.add_save_hook``; ``tests/hooked_cli.py`` for
a real process), never through the environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from modlisa.atomic import atomic_write_text, atomic_write_with
from modlisa.cli import main
from modlisa.config import TrainingConfig
from modlisa.engine import checkpoint as ckpt
from modlisa.synthetic import make_dataset
from modlisa.weights import WeightsError, load_state_into, trainable_state

REPO = Path(__file__).resolve().parents[1]


class Killed(BaseException):
    """Stands for SIGKILL in the in-process tests: nothing after the raise runs."""


class FakeAccelerator:
    """What ``save_last`` uses of Accelerate: one process writing a ``model.safetensors`` of value ``tag``."""

    is_main_process = True

    def __init__(self, tag: float, die_in_save_state: bool = False) -> None:
        self.tag, self.die_in_save_state = tag, die_in_save_state

    def wait_for_everyone(self) -> None:
        return None

    def save_state(self, output_dir: str) -> None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        save_file({"w": torch.full((4,), self.tag)}, str(Path(output_dir) / "model.safetensors"))
        if self.die_in_save_state:
            raise Killed
        torch.save({"step": self.tag}, Path(output_dir) / "optimizer.bin")


def _save(root: Path, tag: float, **kwargs) -> None:
    ckpt.save_last(FakeAccelerator(tag, **kwargs), root, ckpt.TrainerState(global_step=int(tag)))


def _latest_tag(root: Path) -> tuple[str, int]:
    folder = ckpt.resolve_resume("latest", root)
    assert folder is not None and ckpt.is_complete(folder)
    state = ckpt.read_trainer_state(folder)
    weights = load_file(str(folder / "model.safetensors"))
    assert torch.equal(weights["w"], torch.full((4,), float(state.global_step)))
    return folder.name, state.global_step


@pytest.fixture
def die_at():
    """``die_at(point)``: the next save raises Killed at ``point``; hooks are removed after the test."""
    removers = []

    def install(point: str) -> None:
        def hook(name: str, global_step: int) -> None:
            if name == point:
                raise Killed

        removers.append(ckpt.add_save_hook(hook))

    yield install
    for remove in removers:
        remove()


@pytest.mark.parametrize(
    ("where", "expected"),
    [("save_state", ("last", 1)), ("tmp", ("last", 1)), ("swap", ("last.old", 1))],
)
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_as_latest(tmp_path, die_at, where, expected):
    _save(tmp_path, 1.0)
    hooks = list(ckpt._save_hooks)
    if where != "save_state":
        die_at(where)
    with pytest.raises(Killed):
        _save(tmp_path, 2.0, die_in_save_state=where == "save_state")
    assert _latest_tag(tmp_path) == expected
    ckpt._save_hooks[:] = hooks
    _save(tmp_path, 3.0)  # the next save cleans up whatever the kill left
    assert _latest_tag(tmp_path) == ("last", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "last.old"]  # the previous one is kept
    assert ckpt.read_trainer_state(tmp_path / "last.old").global_step == 1


def test_the_previous_checkpoint_is_kept_and_a_corrupt_last_falls_back_to_it(tmp_path, caplog):
    _save(tmp_path, 1.0)
    _save(tmp_path, 2.0)
    assert ckpt.read_trainer_state(tmp_path / "last.old").global_step == 1
    weights = tmp_path / "last" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit inside the tensor data: safetensors still parses it
    weights.write_bytes(bytes(data))
    assert _latest_tag(tmp_path) == ("last.old", 1)
    assert "checksum mismatch" in caplog.text and str(weights) in caplog.text
    (tmp_path / "last.old" / "optimizer.bin").write_bytes(b"corrupt")
    with pytest.raises(ckpt.CheckpointError, match="no good checkpoint to resume.*checksum mismatch.*optimizer.bin"):
        ckpt.find_latest(tmp_path)
    assert ckpt.last_good_checkpoint(tmp_path) is None  # never a "last good" that is not good


def test_no_complete_checkpoint_means_a_fresh_start(tmp_path):
    with pytest.raises(Killed):
        _save(tmp_path, 1.0, die_in_save_state=True)
    assert ckpt.resolve_resume("latest", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ckpt.resolve_resume(str(tmp_path / ckpt.LAST_TMP), tmp_path)


def test_atomic_writes_keep_the_old_file_when_killed(tmp_path):
    target = tmp_path / "best_model_epoch_1.safetensors"
    atomic_write_with(target, lambda tmp: save_file({"v": torch.ones(1)}, str(tmp)))

    def dying_save(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise Killed

    with pytest.raises(Killed):
        atomic_write_with(target, dying_save)
    assert torch.equal(load_file(str(target))["v"], torch.ones(1))
    text = tmp_path / "metrics.json"
    atomic_write_text(text, '{"a": 1}')
    assert json.loads(text.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, text.name])  # no temp file left


def test_corrupt_trainer_state_is_a_clear_error(tmp_path):
    _save(tmp_path, 1.0)
    (tmp_path / "last" / ckpt.TRAINER_STATE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ckpt.CheckpointError, match="trainer_state.json: unreadable trainer state"):
        ckpt.read_trainer_state(tmp_path / "last")
    (tmp_path / "last" / ckpt.TRAINER_STATE).write_text('{"epoch": 1, "bogus": 2}', encoding="utf-8")
    with pytest.raises(ckpt.CheckpointError, match="unexpected.*bogus"):
        ckpt.read_trainer_state(tmp_path / "last")


# ---------------------------------------------------------------------- loading that lies
def _tiny_module() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    return model


def test_missing_and_unexpected_keys_fail_unless_allowed(caplog):
    model = _tiny_module()
    good = {k: v.clone() + 1 for k, v in trainable_state(model).items()}
    state = {k: v for k, v in good.items() if k != "1.weight"} | {"2.weight": torch.zeros(1)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as info:
        load_state_into(model, state, "ckpt.safetensors")
    message = str(info.value)
    assert message.startswith("ckpt.safetensors:") and "'1.weight'" in message and "'2.weight'" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing copied
    with pytest.raises(WeightsError, match="unexpected 1"):
        load_state_into(model, state, "ckpt.safetensors", allowed_missing=["1.*"])
    report = load_state_into(model, state, "ckpt.safetensors", allowed_missing=["1.*"],
                                      allowed_unexpected=["2.weight"])
    assert report["missing"] == ["1.weight"] and report["unexpected"] == ["2.weight"]
    assert torch.equal(model[0].weight, good["0.weight"])
    assert "1 missing key(s)" in caplog.text  # reported even when allowed
    with pytest.raises(WeightsError, match="shape mismatch.*0.weight"):
        load_state_into(model, {**good, "0.weight": torch.zeros(5, 5)}, "ckpt.safetensors")


def _config(data_root: Path, out: Path, **overrides) -> TrainingConfig:
    cfg = TrainingConfig(
        data_root=str(data_root), output_dir=str(out), model="tiny", img_size=64, sam_image_size=64,
        batch_size=2, num_epochs=3, learning_rate=1e-3, warmup_steps=2, use_mixed_precision=False, cpu=True,
        freeze_image_encoder=False, freeze_sam=False, log_every_steps=1, seed=11, queries_per_image=2,
        save_every_steps=1,
    )
    return replace(cfg, **overrides)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, seed=0, num_train=8, num_val=2, num_test=1, image_size=64, progress=False)
    return root


def test_resuming_with_another_model_config_names_the_file_and_keys(data_root, tmp_path, capsys):

    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(asdict(_config(data_root, run, num_epochs=1, stop_after_steps=1))))
    assert main(["train", "--config", str(config)]) == 0
    capsys.readouterr()
    resume = ["train", "--config", str(config), "--resume_from_checkpoint", "latest"]
    code = main([*resume, "--freeze_sam", "true"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err and "freeze_sam: False -> True" in err  # refused: not exact
    code = main([*resume, "--freeze_sam", "true", "--allow_config_change", "true"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert f"{run / 'checkpoints' / 'last' / 'model.safetensors'}: checkpoint does not match" in err
    assert "unexpected" in err and "sam." in err
    for name in ("last", "last.old"):
        (run / "checkpoints" / name / "model.safetensors").write_bytes(b"garbage")
    code = main(resume)
    _, err = capsys.readouterr()
    assert code == 2 and "no good checkpoint to resume" in err and "checksum mismatch" in err
    assert len(err.strip().splitlines()) == 1


def test_eval_of_a_damaged_checkpoint_is_one_line(tmp_path, capsys):
    best = tmp_path / "best_model_epoch_1.pt"
    best.write_bytes(b"not a torch file")
    last = tmp_path / "run" / "checkpoints" / "last"
    last.mkdir(parents=True)
    (last / "model.safetensors").write_bytes(b"\x00" * 4)
    (last / ckpt.TRAINER_STATE).write_text("{}", encoding="utf-8")
    (last / "config.yaml").write_text("model: tiny\n", encoding="utf-8")
    for target, needle in ((best, "not a readable best-model checkpoint"), (last, "not a readable safetensors file")):
        code = main(["eval", "--checkpoint", str(target)])
        _, err = capsys.readouterr()
        assert code == 2 and "Traceback" not in err and needle in err, err
        assert err.startswith(f"modlisa eval: error: {target}")


# ---------------------------------------------------------------------- SIGKILL, then resume
def _start(config: Path, log: Path, resume: bool, sleep_in_save: str | None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    hooked = Path(__file__).with_name("hooked_cli.py")  # injects the save hook, then runs modlisa.cli.main
    args = [sys.executable, str(hooked), sleep_in_save or "-", "train", "--config", str(config)]
    if resume:
        args += ["--resume_from_checkpoint", "latest"]
    with open(log, "w") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _kill_when(proc: subprocess.Popen, condition: Callable[[], bool], log: Path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``condition()`` holds; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            assert proc.poll() is None, f"training ended before the kill point:\n{log.read_text()[-3000:]}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            assert proc.returncode == -signal.SIGKILL
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before the kill point:\n"
                                 f"{log.read_text()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"kill point not reached in {timeout} s:\n{log.read_text()[-3000:]}")


def _step(folder: Path) -> int:
    try:
        return json.loads((folder / ckpt.TRAINER_STATE).read_text())["global_step"]
    except (OSError, ValueError):
        return -1


def _run_to_end(config: Path, log: Path, resume: bool) -> None:
    proc = _start(config, log, resume, None)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_sigkill_mid_save_and_mid_epoch_then_resume_gives_the_same_weights(data_root, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    configs = {}
    for name, out in (("reference", reference), ("killed", killed)):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(asdict(_config(data_root, out))))
    _run_to_end(configs["reference"], tmp_path / "reference.log", resume=False)
    ck = killed / "checkpoints"
    last, tmp, old = ck / ckpt.LAST, ck / ckpt.LAST_TMP, ck / ckpt.LAST_OLD

    # 1. killed while Accelerate's files of last.tmp exist but trainer_state.json does not
    proc = _start(configs["killed"], tmp_path / "1.log", resume=False, sleep_in_save="tmp:120:3")
    _kill_when(proc, lambda: _step(last) >= 2 and (tmp / "model.safetensors").is_file(), tmp_path / "1.log")
    assert not (tmp / ckpt.TRAINER_STATE).exists() and _latest_tag_real(ck) == (ckpt.LAST, 2)

    # 2. resumed, killed between "last -> last.old" and "last.tmp -> last"
    proc = _start(configs["killed"], tmp_path / "2.log", resume=True, sleep_in_save="swap:120:3")
    _kill_when(proc, lambda: ckpt.is_complete(old) and not last.exists(), tmp_path / "2.log")
    assert f"Resumed from {last}:" in (tmp_path / "2.log").read_text()
    assert _latest_tag_real(ck) == (ckpt.LAST_OLD, 2)

    # 3. resumed, killed at whatever moment it is once a checkpoint in epoch 2 exists
    proc = _start(configs["killed"], tmp_path / "3.log", resume=True, sleep_in_save=None)
    _kill_when(proc, lambda: _step(last) >= 6, tmp_path / "3.log")
    assert f"Resumed from {old}:" in (tmp_path / "3.log").read_text()
    assert _latest_tag_real(ck)[1] >= 6

    # 4. resumed to the end
    _run_to_end(configs["killed"], tmp_path / "4.log", resume=True)
    wa = load_file(str(reference / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(last / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    for epoch in (1, 2, 3):
        ma = json.loads((reference / "outputs" / f"metrics_epoch_{epoch}.json").read_text())
        mb = json.loads((killed / "outputs" / f"metrics_epoch_{epoch}.json").read_text())
        assert ma["val"] == mb["val"], epoch
        assert ma["train"]["loss"] == pytest.approx(mb["train"]["loss"], rel=1e-9), epoch
    steps = [json.loads(line)["global_step"] for line in (killed / "outputs" / "train_log.jsonl").open()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 13))  # each step logged once despite three restarts
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == [ckpt.LAST, ckpt.LAST_OLD]


def _latest_tag_real(checkpoints: Path) -> tuple[str, int]:
    """(folder name, global step) of what ``latest`` resolves to; it must be complete and load."""
    folder = ckpt.resolve_resume("latest", checkpoints)
    assert folder is not None and ckpt.is_complete(folder)
    load_file(str(folder / "model.safetensors"))
    torch.load(folder / "optimizer.bin", map_location="cpu", weights_only=True)
    return folder.name, ckpt.read_trainer_state(folder).global_step
