"""``cnnkit summary`` and ``cnnkit models``: the issue's acceptance numbers and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnkit.cli import main

LENET = "Input(32x32) -> Conv(5x5,6) -> Pool -> Conv(5x5,16) -> Pool -> FC(120) -> FC(84) -> FC(10)"


def run_json(capsys, *argv: str):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_summary_of_the_page_lenet_spec(capsys):
    report = run_json(capsys, "summary", LENET)
    rows = {row["name"]: row for row in report["rows"]}
    assert report["params"] == 61_706 and report["macs"] == 416_520
    assert report["input_size"] == [1, 1, 32, 32]
    # RF = 1 + sum (k_l - 1) * prod of earlier strides: conv 5 -> pool 6 (jump 2) -> conv 14 -> pool 16 (jump 4)
    assert (rows["conv1"]["rf"], rows["conv1"]["jump"]) == (5, 1)
    assert (rows["conv2"]["rf"], rows["conv2"]["jump"]) == (14, 2)
    assert (rows["pool2"]["rf"], rows["pool2"]["jump"]) == (16, 4)
    names = [row["name"] for row in report["rows"]]
    assert all(row["rf"] == "global" for row in report["rows"][names.index("fc1") :])
    assert rows["conv2"]["output_shape"] == [1, 16, 10, 10] and rows["conv2"]["params"] == 2_416


def test_summary_table_shows_the_totals(capsys):
    assert main(["summary", LENET]) == 0
    out = capsys.readouterr().out
    assert "params: 61,706" in out and "conv2" in out and "global" in out


def test_summary_of_a_registered_model_and_an_input_override(capsys):
    report = run_json(capsys, "summary", "lenet5_classic")
    assert report["params"] == 61_706 and report["input_size"] == [1, 1, 32, 32]
    report = run_json(capsys, "summary", LENET, "--input", "3x32x32")
    assert report["params"] == 61_706 + 2 * 6 * 25 and report["input_size"] == [1, 3, 32, 32]
    report = run_json(capsys, "summary", "lenet5", "--input", "3x32x32")
    assert report["params"] == 61_706 + 2 * 6 * 25


def one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    return lines[0]


def test_unknown_model_is_one_line_with_close_names(capsys):
    line = one_error_line(capsys, ["summary", "lenet6"])
    assert line.startswith("cnnkit summary: error: unknown model 'lenet6'") and "'lenet5'" in line


def test_bad_spec_is_one_line_naming_the_token(capsys):
    line = one_error_line(capsys, ["summary", "Input(32x32) -> Cnv(5x5,6) -> FC(10)"])
    assert (
        "unknown layer 'Cnv'" in line
        and "did you mean 'Conv'" in line
        and "at column 17, 'Cnv(5x5,6)'" in line
    )
    line = one_error_line(capsys, ["summary", "Input(8x8) -> Conv(5x5,6) -> Pool -> Conv(5x5,16)"])
    assert "Conv(5x5,16) at position 4: input 2x2 is smaller than the 5x5 kernel" in line


@pytest.mark.parametrize("bad", ["3x224", "axb", "3x0x7", "3x224x224x1", ""])
def test_bad_input_size_is_one_line(capsys, bad):
    line = one_error_line(capsys, ["summary", "lenet5", "--input", bad])
    assert "--input must be CxHxW" in line and repr(bad) in line


def test_input_too_small_or_wrong_for_a_fixed_head(capsys):
    assert "at least 32x32" in one_error_line(capsys, ["summary", "lenet5", "--input", "1x16x16"])
    assert "cannot run on a 1x64x64 input" in one_error_line(
        capsys, ["summary", "lenet5", "--input", "1x64x64"]
    )


def test_models_lists_lenet5_first_with_its_card(capsys):
    rows = run_json(capsys, "models")
    assert rows[0]["name"] == "lenet5" and rows[0]["params"] == 61_706 and rows[0]["macs"] == 416_520
    assert rows[0]["input_size"] == [1, 32, 32]
    assert [r["name"] for r in run_json(capsys, "models", "lenet5")] == ["lenet5", "lenet5_classic"]
    assert [r["name"] for r in run_json(capsys, "models", "lenet5_*")] == ["lenet5_classic"]
    assert main(["models", "lenet*"]) == 0
    out = capsys.readouterr().out
    assert "lenet5_classic" in out and "61,706" in out and "0.000417" in out and "1x32x32" in out
    assert "no registered model matches 'zzz*'" in one_error_line(capsys, ["models", "zzz*"])


def test_python_dash_m_help():
    result = subprocess.run(
        [sys.executable, "-m", "cnnkit", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0
    assert "summary" in result.stdout and "models" in result.stdout
