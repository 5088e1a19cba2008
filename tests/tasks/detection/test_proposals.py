import os
import sys

import numpy as np
import pytest
import torch

from cnnkit.errors import ConfigError
from cnnkit.tasks.detection import proposals as P
from cnnkit.tasks.detection.proposals import ProposalCache, SelectiveSearch, proposal_recall, to_uint8


def drawn_image():
    """A 64x64 black canvas with a white bar and a grey square: two objects with known boxes."""
    image = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    image[0, 0, 8:40, 10:20] = 255  # box [10, 8, 20, 40]
    image[0, 0, 44:60, 36:56] = 160  # box [36, 44, 56, 60]
    return image, torch.tensor([[10.0, 8.0, 20.0, 40.0], [36.0, 44.0, 56.0, 60.0]])


def test_selective_search_recalls_drawn_boxes_exactly():
    image, boxes = drawn_image()
    (found,) = SelectiveSearch(cache=False, workers=1)(image)
    assert found.dtype == torch.float32 and found.shape[1] == 4 and len(found) >= 2
    assert proposal_recall([found], [boxes], (0.5, 0.99)) == {0.5: 1.0, 0.99: 1.0}


def test_proposals_are_deterministic_and_the_cap_keeps_the_best_ranked():
    image, _ = drawn_image()
    image = image.clone()
    image[0, 0, 20:30, 40:50] = 90
    full = SelectiveSearch(cache=False, workers=1)(image)[0]
    again = SelectiveSearch(cache=False, workers=1)(image)[0]
    capped = SelectiveSearch(cache=False, workers=1, max_proposals=3)(image)[0]
    assert len(full) > 3 and torch.equal(full, again)
    assert torch.equal(capped, full[:3])


def test_normalised_input_gives_the_same_proposals():
    image, _ = drawn_image()
    normalised = (image.float() / 255 - 0.1307) / 0.3081
    assert np.array_equal(to_uint8(normalised[0]), image[0, 0].numpy())
    search = SelectiveSearch(cache=False, workers=1)
    assert torch.equal(search(normalised)[0], search(image)[0])
    assert to_uint8(torch.full((3, 4, 5), 0.7)).shape == (4, 5, 3)  # constant RGB: zeros, channels last


def test_cache_entry_is_written_atomically_and_a_partial_one_is_recomputed(tmp_path, monkeypatch):
    image, _ = drawn_image()
    search = SelectiveSearch(cache=tmp_path, workers=1)
    (first,) = search(image)
    key = P.image_key(to_uint8(image[0]))
    path = search.cache.path(key)
    assert path.parent.parent == tmp_path / search.settings_key() and path.is_file()
    assert np.array_equal(search.cache.load(key), first.numpy().astype(np.int32))

    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 7])  # a write cut short
    assert search.cache.load(key) is None
    path.write_bytes(blob[:-16] + bytes(16))  # right length, wrong bytes
    assert search.cache.load(key) is None
    calls, original = [], P.selective_search
    monkeypatch.setattr(P, "selective_search", lambda *a: calls.append(a) or original(*a))
    (again,) = search(image)
    assert len(calls) == 1 and torch.equal(again, first) and path.read_bytes() == blob
    (cached,) = search(image)
    assert len(calls) == 1 and torch.equal(cached, first)


def test_a_killed_write_leaves_no_entry_and_no_temporary_file(tmp_path, monkeypatch):
    cache = ProposalCache(tmp_path)

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.store("ab" * 16, np.array([[1, 2, 3, 4]]))
    assert cache.load("ab" * 16) is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_min_size_can_leave_an_image_without_proposals():
    image, _ = drawn_image()
    (found,) = SelectiveSearch(cache=False, workers=1, min_size=20)(image)
    assert len(found) and ((found[:, 2:] - found[:, :2]).amin(1) >= 20).all()
    (none,) = SelectiveSearch(cache=False, workers=1, min_size=65)(image)
    assert none.shape == (0, 4)


@pytest.mark.slow
def test_parallel_workers_give_the_serial_proposals():
    image, _ = drawn_image()
    images = torch.cat([image, image.flip(-1), image.flip(-2)])
    serial = SelectiveSearch(cache=False, workers=1)(images)
    parallel = SelectiveSearch(cache=False, workers=2)(images)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))


def test_missing_opencv_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ConfigError, match=r"pip install 'cnnkit\[rcnn\]'") as err:
        SelectiveSearch()
    assert "\n" not in str(err.value)


def test_bad_settings_raise_config_errors():
    with pytest.raises(ConfigError, match="mode"):
        SelectiveSearch(mode="slow")
    with pytest.raises(ConfigError, match="max_proposals"):
        SelectiveSearch(max_proposals=0)


def test_proposal_recall_by_hand():
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), torch.zeros(0, 4)]
    found = [
        torch.tensor([[0.0, 0.0, 10.0, 8.0]]),
        torch.zeros(0, 4),
    ]  # IoU 0.8 with the first, 0 with the second
    assert proposal_recall(found, gt, (0.5, 0.7, 0.9)) == {0.5: 0.5, 0.7: 0.5, 0.9: 0.0}
