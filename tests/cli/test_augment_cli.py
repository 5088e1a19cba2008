"""``cnnkit augment --preview``: writes a grid; bad input is one line on stderr and exit code 2."""

import numpy as np
import pytest
from PIL import Image

from cnnkit.cli import main


def test_preview_writes_a_grid_of_originals_and_augmented(tmp_path, capsys):
    out = tmp_path / "grid.png"
    config = tmp_path / "aug.yaml"
    config.write_text("- RandomResizedCrop: {size: 64}\n- HorizontalFlip: {p: 1.0}\n")
    assert (
        main(
            [
                "augment",
                "--preview",
                "--dataset",
                "mnist-det",
                "--n",
                "3",
                "--config",
                str(config),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    grid = np.asarray(Image.open(out))
    # one row of 128-px originals and one of 64-px crops padded to 128, with 4-px gaps
    assert grid.shape == (2 * 128 + 3 * 4, 3 * 128 + 4 * 4, 3)
    assert "wrote" in capsys.readouterr().out


def test_preview_on_photos_draws_boxes(tmp_path):
    out = tmp_path / "photos.png"
    assert main(["augment", "--preview", "--n", "2", "--out", str(out), "--seed", "3"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 256 + 3 * 4, 2 * 256 + 3 * 4, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "{missing}"], "not found"),
        (["--config", "{bad}"], "did you mean 'HorizontalFlip'"),
        (["--dataset", "mnist-dett"], "did you mean 'mnist-det'"),
        (["--n", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- HorizontalFlipp: {}\n")
    args = [a.format(missing=tmp_path / "none.yaml", bad=bad) for a in args]
    assert main(["augment", "--preview", "--out", str(tmp_path / "g.png"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_without_preview_it_says_what_to_do(capsys):
    assert main(["augment"]) == 2
    assert "--preview" in capsys.readouterr().err
