"""The command line: help, and one clear error line (exit 2, no traceback) for every usage mistake."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pneumoscan.cli import main

CLI = Path(sys.executable).parent / "pneumoscan"


def test_help_lists_the_subcommands():
    result = subprocess.run([str(CLI), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("train", "evaluate", "predict", "data"):
        assert command in result.stdout


def assert_one_error_line(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pneumoscan: error:"), err
    assert "Traceback" not in err[0]
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])


def test_train_with_missing_data_is_one_error_line(tmp_path, capsys):
    missing = tmp_path / "no_such_data"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert_one_error_line(capsys, str(missing), "does not exist")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, fragment", [
    ("train.epochs=many", "train.epochs"),
    ("train.epoch=3", "train.epoch"),
    ("nonsense", "section.key=value"),
    ("evaluate.threshold_rule=best", "evaluate.threshold_rule"),
])
def test_train_with_a_bad_setting_is_one_error_line(tmp_path, kermany_dir, capsys, setting, fragment):
    assert main(["train", "--data", str(kermany_dir), "--out", str(tmp_path / "run"), "--set", setting]) == 2
    assert_one_error_line(capsys, fragment)
    assert not (tmp_path / "run").exists()


def test_train_without_out_is_one_error_line(kermany_dir, capsys):
    assert main(["train", "--data", str(kermany_dir)]) == 2
    assert_one_error_line(capsys, "--out")


def test_commands_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert_one_error_line(capsys, str(tmp_path / "config.json"))
    assert main(["predict", str(tmp_path), "x.jpeg"]) == 2
    assert_one_error_line(capsys, str(tmp_path / "config.json"))
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert_one_error_line(capsys, str(tmp_path / "config.json"))


def test_data_info_reports_counts_and_skipped_files(tmp_path, copy_real_images, capsys):
    root = tmp_path / "chest_xray"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            copy_real_images(split, cls, 10, root / split / cls)
    (root / "train" / "NORMAL" / "notes.txt").write_text("x")
    assert main(["data", "info", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"kermany data at {root}" in out
    assert f"skipped {root / 'train' / 'NORMAL' / 'notes.txt'}: not an image file (.txt)" in out
    assert "val" in out and "test" in out


def test_argparse_usage_errors_exit_2_without_traceback():
    result = subprocess.run([str(CLI), "train", "--epochs", "three"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid int value: 'three'" in result.stderr and "Traceback" not in result.stderr


def test_commands_print_no_tensorflow_start_up_noise(tiny_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    cli = Path(sys.executable).parent / "pneumoscan"
    quiet = subprocess.run([str(cli), "predict", str(tiny_run.root), str(tmp_path / "missing.jpeg")],
                           capture_output=True, text=True)
    assert quiet.returncode == 1, quiet.stderr
    everything = quiet.stdout + quiet.stderr
    for noise in ("oneDNN", "absl", "cpu_feature_guard", "I0000", "W0000"):
        assert noise not in everything, everything
    assert "missing.jpeg" in quiet.stdout and "1 of 1 inputs failed" in quiet.stderr
    verbose = subprocess.run([str(cli), "--verbose", "predict", str(tiny_run.root), str(tmp_path / "missing.jpeg")],
                             capture_output=True, text=True)
    assert "oneDNN custom operations" in verbose.stderr  # what --verbose is for
