"""detection_statistics on a hand-made dataset with known numbers."""

from __future__ import annotations

import math

import torch

from cnnkit.data import detection_statistics


def test_statistics_of_known_boxes():
    items = [
        (None, {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.0, 0, 4, 9], [1, 1, 3, 3]])}),
        (None, {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}),
        (None, {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.0, 0, 10, 10]])}),
    ]
    stats = detection_statistics(items, num_classes=4)
    assert stats.images == 3 and stats.objects == 3
    assert stats.objects_per_image == (1.0, 0, 2)
    assert stats.class_counts == [1, 0, 2, 0]
    assert stats.box_side_quantiles[0] == 2.0 and stats.box_side_quantiles[2] == 6.0
    assert stats.box_side_quantiles[4] == 10.0
    assert stats.box_width_quantiles == [2.0, 2.4, 4.0, 8.8, 10.0]
    assert stats.box_height_quantiles[2] == 9.0
    first = detection_statistics(items, num_classes=4, limit=2)
    assert first.images == 2 and first.objects_per_image == (1.0, 0, 2)
    empty = detection_statistics(items[1:2], num_classes=1)
    assert empty.class_counts == [0] and all(math.isnan(v) for v in empty.box_side_quantiles)
