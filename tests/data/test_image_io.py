"""Image reading: missing files, corrupt data, pixel limit checked before decoding, modes, no overwrites."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import CorruptImageError, image_io, image_size, read_image, write_png
from cnnkit.errors import DataError


def png_header_only(path, width, height):
    """A PNG whose header declares ``width x height`` 1-bit pixels but holds one tiny IDAT: a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def no_decode(monkeypatch):
    """Fail the test if any image is decoded."""

    def refuse(*args, **kwargs):
        raise AssertionError("decode_image was called")

    monkeypatch.setattr(image_io, "decode_image", refuse)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="nothere.png: image file not found"):
        read_image(tmp_path / "nothere.png")


def test_not_an_image_is_corrupt_and_names_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(CorruptImageError, match="notes.png: not a readable image"):
        read_image(path)


def test_truncated_png_is_corrupt(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    assert image_size(path) == (64, 64)  # the header is intact
    with pytest.raises(CorruptImageError, match="cut.png: corrupt or truncated"):
        read_image(path)


def test_huge_header_refused_before_decoding(tmp_path, no_decode):
    path = png_header_only(tmp_path / "bomb.png", 20000, 20000)
    assert path.stat().st_size < 100
    with pytest.raises(DataError, match="bomb.png: image refused before decoding"):
        read_image(path)


def test_max_pixels_limit_from_header(tmp_path, no_decode):
    path = png_header_only(tmp_path / "big.png", 10000, 9000)  # 90.0M > Pillow's 89.5M, below its hard limit
    with pytest.raises(
        DataError, match=r"big.png: image is 10000x9000 = 90000000 pixels, over the limit of 89478485"
    ):
        read_image(path)
    small = tmp_path / "small.png"
    Image.new("L", (20, 10)).save(small)
    with pytest.raises(DataError, match="over the limit of 199"):
        read_image(small, max_pixels=199)
    assert image_size(small, max_pixels=200) == (20, 10)


def test_modes_and_16_bit(tmp_path):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = read_image(tmp_path / "rgba.png", "RGB")
    assert rgb.shape == (3, 4, 5) and rgb.dtype == torch.uint8
    assert rgb[:, 0, 0].tolist() == [200, 0, 0]
    assert read_image(tmp_path / "rgba.png", "UNCHANGED").shape == (4, 4, 5)
    gray = read_image(tmp_path / "rgba.png", "GRAY")
    assert gray.shape == (1, 4, 5) and abs(int(gray[0, 0, 0]) - round(0.299 * 200)) <= 1
    Image.fromarray(np.full((3, 3), 51400, dtype=np.uint16)).save(tmp_path / "deep.png")
    deep = read_image(tmp_path / "deep.png", "UNCHANGED")
    assert deep.dtype == torch.uint8 and int(deep[0, 0, 0]) == 51400 >> 8
    with pytest.raises(DataError, match="unknown image mode 'rgb'"):
        read_image(tmp_path / "rgba.png", "rgb")  # type: ignore[arg-type]


def test_write_png_never_overwrites(tmp_path):
    image = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 4)
    path = write_png(image, tmp_path / "sub" / "a.png")
    assert torch.equal(read_image(path, "UNCHANGED"), image)
    before = path.read_bytes()
    with pytest.raises(DataError, match="a.png: already exists; refusing to overwrite"):
        write_png(image + 1, path)
    assert path.read_bytes() == before
    write_png(image + 1, path, overwrite=True)
    assert torch.equal(read_image(path, "UNCHANGED"), image + 1)
