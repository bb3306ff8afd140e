"""Wrong configs and arguments (issue 7.5): one clear line naming the field or path, exit code 2, no
traceback; ``--debug`` shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modlisa.cli import main
from modlisa.config import ConfigError, config_from_dict

REPO = Path(__file__).resolve().parents[1]
CPU = ["--cpu", "true", "--use_mixed_precision", "false"]


def run_cli(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    _, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if "error" in line], err


def yaml_file(tmp_path: Path, content: object, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
    return str(path)


TRAIN_CASES = [
    ("unknown field in YAML", lambda t: ["--config", yaml_file(t, {"batch_sise": 2})],
     "unknown field(s) batch_sise (did you mean batch_size?)"),
    ("wrong type in YAML", lambda t: ["--config", yaml_file(t, {"batch_size": "two"})],
     "batch_size must be of type int, got 'two'"),
    ("wrong type on the command line", lambda t: ["--num_epochs", "1.5"], "num_epochs must be of type int"),
    ("list where a value is expected", lambda t: ["--config", yaml_file(t, {"learning_rate": [1, 2]})],
     "learning_rate must be of type float"),
    ("malformed YAML", lambda t: ["--config", yaml_file(t, "batch_size: [2\n")], "is not valid YAML"),
    ("YAML that is not a mapping", lambda t: ["--config", yaml_file(t, "- 1\n- 2\n")], "must contain a mapping"),
    ("missing config file", lambda t: ["--config", str(t / "absent.yaml")], "absent.yaml does not exist"),
    ("batch_size 0", lambda t: ["--batch_size", "0"], "batch_size must be > 0, got 0"),
    ("fp16 on CPU", lambda t: ["--cpu", "true", "--mixed_precision", "fp16"], "mixed_precision=fp16 needs a CUDA GPU"),
    ("quantised LM with its base weights training", lambda t: [*CPU, "--use_quantization", "true",
                                                                "--freeze_text_encoder", "false"],
     "a quantised LM's base weights cannot train"),
    ("lora_r with use_lora false", lambda t: [*CPU, "--use_lora", "false", "--lora_r", "8"],
     "lora_r=8 set but use_lora is false"),
    ("lora modules with use_lora false", lambda t: [*CPU, "--use_lora", "false", "--lora_target_modules", "k_proj"],
     "lora_target_modules=['k_proj'] set but use_lora is false"),
    ("empty lora modules", lambda t: [*CPU, "--lora_target_modules", ","], "lora_target_modules is empty"),
    ("missing data_root", lambda t: [*CPU, "--data_root", str(t / "nodata")], "nodata' is not a folder"),
    ("missing resume folder", lambda t: [*CPU, "--resume_from_checkpoint", str(t / "nockpt")],
     "resume_from_checkpoint"),
    ("missing local model folder", lambda t: [*CPU, "--model", "composite", "--vision_model", "./no/such/clip",
                                              "--language_model", "./no/such/lm"],
     "vision_model './no/such/clip' is not a folder"),
    ("unknown preset", lambda t: [*CPU, "--model", "gpt-17"], "model must be one of"),
]


@pytest.mark.parametrize(("case", "args", "needle"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_config_errors_are_one_line_exit_2(tmp_path, capsys, case, args, needle):
    argv = args(tmp_path)
    if "--data_root" not in argv:
        argv = ["--data_root", str(tmp_path), *argv]
    code, errors, err = run_cli(capsys, "train", *argv)
    assert code == 2, err
    assert len(errors) == 1 and errors[0].startswith("modlisa train: error: "), err
    assert needle in errors[0] and "Traceback" not in err


def test_a_model_id_that_cannot_be_loaded_is_one_line(tmp_path, capsys):
    """Offline and not cached: transformers' OSError, shown as one line."""
    code, errors, err = run_cli(capsys, "train", "--data_root", str(tmp_path), "--output_dir", str(tmp_path / "o"),
                                *CPU, "--model", "composite", "--vision_model", "nobody/no-such-vision-model",
                                "--language_model", "nobody/no-such-lm")
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("modlisa train: error: ")


def test_eval_with_a_missing_checkpoint(tmp_path, capsys):
    code, errors, err = run_cli(capsys, "eval", "--checkpoint", str(tmp_path / "nothing.pt"))
    assert code == 2 and len(errors) == 1 and "nothing.pt does not exist" in errors[0], err


def test_lora_options_are_fine_when_lora_is_on_or_left_at_defaults(tmp_path):
    for values in ({"use_lora": True, "lora_r": 8}, {"use_lora": False},
                   {"model": "lisa-7b", "use_lora": False, "lora_r": 8}):  # the preset turns LoRA on itself
        config_from_dict({"data_root": str(tmp_path), **values}).validate(cuda_available=True)
    with pytest.raises(ConfigError, match="lora_alpha=8, lora_dropout=0.2 set but use_lora is false"):
        config_from_dict({"use_lora": False, "lora_alpha": 8, "lora_dropout": 0.2}).validate(check_paths=False)


def _subprocess(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "modlisa.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def test_a_real_process_prints_no_traceback_and_debug_shows_it(tmp_path):
    args = ["train", "--data_root", str(tmp_path), *CPU, "--use_lora", "false", "--lora_r", "8"]
    plain = _subprocess(*args)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == ["modlisa train: error: lora_r=8 set but use_lora is false: set "
                                                 "use_lora: true to train LoRA, or remove the lora_* options"]
    debug = _subprocess("--debug", *args)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
