"""`cnnkit train / eval / predict` end to end on a small slice of MNIST-5k."""

import json

import pytest
import torch
from PIL import Image

from cnnkit.cli import main
from cnnkit.data import MNIST5k

FAST = [
    "data.train_size=1000",
    "data.val_size=200",
    "data.batch_size=32",
    "epochs=2",
    "plots=false",
    "progress=false",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *FAST, f"output_dir={out}"]) == 0
    return out


def test_train_prints_accuracy_then_run_dir(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *FAST, "epochs=1", f"output_dir={out}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out)
    assert lines[-2].startswith("test accuracy ")
    accuracy = float(lines[-2].split()[2].rstrip(","))
    assert 0.1 < accuracy <= 1.0


def test_eval_json_reports_the_best_accuracy(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert metrics["accuracy"] == pytest.approx(max(row["accuracy"] for row in state["history"]))
    assert 0.5 < metrics["accuracy"] <= 1.0
    assert len(metrics["confusion"]) == 10 and metrics["samples"] == 200


def test_eval_table(run_dir, capsys):
    assert main(["eval", str(run_dir / "best.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "top-5" in out


def test_predict_digit_pngs(run_dir, tmp_path, capsys):
    test = MNIST5k("test", pad_to_32=False)
    paths = []
    for i in range(4):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(test.images[i, 0].numpy()).save(path)
        paths.append(str(path))
    assert main(["predict", str(run_dir), *paths, "--json", "--topk", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == paths
    for r in results:
        scores = [t["score"] for t in r["topk"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-6
    correct = sum(r["topk"][0]["label"] == str(int(test.labels[i])) for i, r in enumerate(results))
    assert correct >= 2


def test_predict_rgb_photo_is_converted(run_dir, tmp_path, capsys):
    path = tmp_path / "photo.jpg"
    Image.fromarray((torch.rand(48, 64, 3) * 255).byte().numpy()).save(path)
    assert main(["predict", str(run_dir), str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "epoch=3"], "'epochs'"),
        (["train", "model=resnet05"], "resnet50"),
        (["train", "optim.lr=fast"], "optim.lr"),
        (["eval", "no/such/run"], "no/such/run"),
        (["predict", "no/such/run", "x.png"], "no/such/run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_predict_missing_and_corrupt_images(run_dir, tmp_path, capsys):
    assert main(["predict", str(run_dir), str(tmp_path / "absent.png")]) == 2
    assert "absent.png" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["predict", str(run_dir), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_saves_last_and_exits_cleanly(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "interrupted"
    cmd = [
        sys.executable,
        "-u",
        "-m",
        "cnnkit",
        "train",
        *FAST,
        "epochs=50",
        "progress=true",
        f"output_dir={out}",
    ]
    # A shell's background job inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
    # restore the default so the test behaves the same however the test run was started.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stdout:  # wait for the first finished epoch
        if line.startswith("epoch 1/50"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "cnnkit train: interrupted" and "Traceback" not in err
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["epoch"] >= 1 and state["step"] >= 31


def test_dashed_options_are_overrides(tmp_path, capsys):
    out = tmp_path / "dashed"
    argv = ["train", "--epochs", "1", "--data.train-size=300", "--data.val_size", "100", "--plots", "false"]
    assert main([*argv, "--progress=false", f"--output-dir={out}"]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and state["history"][-1]["samples"] == 100
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
