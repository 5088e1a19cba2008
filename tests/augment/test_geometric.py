"""Geometric transforms against torchvision.transforms.v2.functional on identical parameters."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision import tv_tensors

from cnnkit.augment import (
    HorizontalFlip,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    Resize,
    crop_resize,
)
from cnnkit.augment.base import MIN_BOX_SIZE
from cnnkit.errors import ConfigError

BILINEAR = TF.InterpolationMode.BILINEAR


def _batch(generator, b=6, h=36, w=44):
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=generator)


def _detection_targets(b, h, w):
    """Two boxes per sample with their exact rectangular instance masks."""
    boxes = torch.tensor([[4.0, 5.0, 20.0, 17.0], [22.0, 14.0, w - 3.0, h - 4.0]])
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    return [
        {"boxes": boxes.clone(), "labels": torch.tensor([1, 2]), "masks": masks.clone()} for _ in range(b)
    ]


def _mask_box(mask):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _tv_boxes(boxes, size):
    return tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size)


def test_random_resized_crop_equals_torchvision_on_the_cpu(generator):
    """On the CPU each crop goes through torchvision's own kernel: equal, antialiasing and uint8 included."""
    x = _batch(generator)
    t = RandomResizedCrop(24)
    params = t.sample(x, generator)
    y, _ = t.apply(x, None, params)
    y_float, _ = t.apply(x.float() / 255, None, params)
    for i in range(x.shape[0]):
        left, top, w, h = params["crop"][i].tolist()
        assert torch.equal(y[i], TF.resized_crop(x[i], top, left, h, w, [24, 24], BILINEAR, antialias=True))
        ref = TF.resized_crop(x[i].float() / 255, top, left, h, w, [24, 24], BILINEAR, antialias=True)
        assert (y_float[i] - ref).abs().max() < 1e-6
    assert (params["crop"][:, 2] > 24).any() and (params["crop"][:, 2] < 24).any()  # shrunk and enlarged


def test_batched_crop_resize_matches_torchvision_without_antialias(generator):
    x = _batch(generator)
    params = RandomResizedCrop(24).sample(x, generator)
    y, _ = crop_resize(x.float() / 255, None, params["crop"], (24, 24), antialias=False, batched=True)
    for i in range(x.shape[0]):
        left, top, w, h = params["crop"][i].tolist()
        ref = TF.resized_crop(x[i].float() / 255, top, left, h, w, [24, 24], BILINEAR, antialias=False)
        assert (y[i] - ref).abs().max() < 1e-5


def test_batched_crop_resize_with_antialias_equals_torchvision_when_enlarging(generator):
    x = _batch(generator, h=60, w=60)
    params = RandomResizedCrop(48, scale=(0.2, 0.5)).sample(x, generator)
    assert (params["crop"][:, 2:] <= 48).all()
    y, _ = crop_resize(x, None, params["crop"], (48, 48), batched=True)
    for i in range(x.shape[0]):
        left, top, w, h = params["crop"][i].tolist()
        ref = TF.resized_crop(x[i], top, left, h, w, [48, 48], BILINEAR, antialias=True)
        assert (y[i].int() - ref.int()).abs().max() <= 1


def test_batched_antialiased_shrink_is_close_to_torchvision_on_a_photo():
    """The batched path shrinks with a box filter of bilinear samples, not torchvision's triangle filter."""
    from skimage import data

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    y, _ = crop_resize(photo, None, torch.tensor([[0, 0, 512, 512]]), (200, 200), batched=True)
    ref = TF.resize(photo[0], [200], BILINEAR, antialias=True)
    plain = TF.resize(photo[0], [200], BILINEAR, antialias=False)
    assert (y[0] - ref).abs().mean() < 0.01
    assert (y[0] - ref).abs().mean() < 0.5 * (plain - ref).abs().mean()


def test_random_resized_crop_boxes_match_torchvision_and_masks(generator):
    b, h, w = 6, 36, 44
    x = _batch(generator, b, h, w)
    targets = _detection_targets(b, h, w)
    t = RandomResizedCrop((20, 28), scale=(0.3, 1.0))
    params = t.sample(x, generator)
    _, out = t.apply(x, targets, params)
    for i in range(b):
        left, top, cw, ch = params["crop"][i].tolist()
        ref = TF.resized_crop(_tv_boxes(targets[i]["boxes"], (h, w)), top, left, ch, cw, [20, 28])
        ref = torch.as_tensor(ref)
        keep = ((ref[:, 2] - ref[:, 0]) >= MIN_BOX_SIZE) & ((ref[:, 3] - ref[:, 1]) >= MIN_BOX_SIZE)
        torch.testing.assert_close(out[i]["boxes"], ref[keep], atol=1e-4, rtol=0)
        assert out[i]["labels"].tolist() == targets[i]["labels"][keep].tolist()
        for box, mask in zip(out[i]["boxes"], out[i]["masks"]):
            assert (_mask_box(mask) - box).abs().max() <= 1.0


def test_resize_matches_torchvision(generator):
    x = _batch(generator, b=2, h=20, w=30)
    for size in (40, 13):
        y = Resize(size)(x)
        assert y.shape[-2:] == TF.resize(x[0], [size]).shape[-2:]
        for i in range(2):
            assert torch.equal(y[i], TF.resize(x[i], [size], BILINEAR, antialias=True))
    assert Resize(10, max_size=12).output_size((20, 30), {}) == (8, 12)


def test_horizontal_flip_matches_torchvision(generator):
    b, h, w = 8, 36, 44
    x = _batch(generator, b, h, w)
    targets = _detection_targets(b, h, w)
    t = HorizontalFlip(p=0.5)
    params = t.sample(x, generator)
    y, out = t.apply(x, targets, params)
    assert 0 < int(params["flip"].sum()) < b
    for i in range(b):
        flipped = bool(params["flip"][i])
        assert torch.equal(y[i], TF.horizontal_flip(x[i]) if flipped else x[i])
        ref = TF.horizontal_flip(_tv_boxes(targets[i]["boxes"], (h, w))) if flipped else targets[i]["boxes"]
        assert torch.equal(out[i]["boxes"], torch.as_tensor(ref))
        for box, mask in zip(out[i]["boxes"], out[i]["masks"]):
            assert torch.equal(_mask_box(mask), box)
    assert RandomHorizontalFlip is HorizontalFlip


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_random_rotation_matches_torchvision(generator, interpolation):
    x = _batch(generator)
    t = RandomRotation(40, interpolation=interpolation)
    params = t.sample(x, generator)
    y, _ = t.apply(x, None, params)
    mode = TF.InterpolationMode(interpolation)
    for i in range(x.shape[0]):
        ref = TF.rotate(x[i], float(params["angle"][i]), mode)
        differ = (y[i].int() - ref.int()).abs()
        if interpolation == "bilinear":
            assert differ.max() <= 1
        else:  # nearest: ties at exactly half a pixel may round either way
            assert (differ > 0).float().mean() < 0.002


def test_random_rotation_boxes_are_enclosing_boxes_as_torchvision(generator):
    b, h, w = 6, 36, 44
    x = _batch(generator, b, h, w)
    targets = _detection_targets(b, h, w)
    t = RandomRotation(30)
    params = t.sample(x, generator)
    _, out = t.apply(x, targets, params)
    for i in range(b):
        ref = torch.as_tensor(TF.rotate(_tv_boxes(targets[i]["boxes"], (h, w)), float(params["angle"][i])))
        torch.testing.assert_close(out[i]["boxes"], ref, atol=1e-4, rtol=0)
        for box, mask in zip(out[i]["boxes"], out[i]["masks"]):
            mb = _mask_box(mask)  # the rotated mask lies inside the enclosing box of the rotated corners
            assert (mb[:2] >= box[:2] - 1).all() and (mb[2:] <= box[2:] + 1).all()


def test_boxes_leaving_the_image_are_dropped_with_labels_and_masks():
    x = torch.zeros(1, 3, 20, 20)
    masks = torch.zeros(2, 20, 20, dtype=torch.uint8)
    masks[0, 2:6, 2:6] = 1
    masks[1, 12:18, 12:18] = 1
    target = [
        {
            "boxes": torch.tensor([[2.0, 2.0, 6.0, 6.0], [12.0, 12.0, 18.0, 18.0]]),
            "labels": torch.tensor([3, 4]),
            "masks": masks,
        }
    ]
    crop = RandomResizedCrop(10)
    _, out = crop.apply(x, target, {"crop": torch.tensor([[10, 10, 10, 10]])})
    assert out[0]["labels"].tolist() == [4]
    assert out[0]["masks"].shape == (1, 10, 10)
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[2.0, 2.0, 8.0, 8.0]]))


def test_semantic_mask_moves_with_the_image():
    x = torch.zeros(2, 1, 10, 10)
    mask = torch.zeros(10, 10, dtype=torch.long)
    mask[:, :3] = 7
    targets = [{"mask": mask.clone()}, {"mask": mask.clone()}]
    _, out = HorizontalFlip().apply(x, targets, {"flip": torch.tensor([True, False])})
    assert out[0]["mask"][:, 7:].eq(7).all() and out[1]["mask"][:, :3].eq(7).all()
    _, out = Resize(20, interpolation="nearest")(x, targets)
    assert (
        out[0]["mask"].dtype == torch.long
        and out[0]["mask"][:, :6].eq(7).all()
        and out[0]["mask"][:, 6:].eq(0).all()
    )


def test_per_sample_parameters_differ_and_seeded_runs_repeat(generator):
    x = _batch(generator, b=16)
    for t in (RandomResizedCrop(24), RandomRotation(30), HorizontalFlip()):
        a = t.sample(x, torch.Generator().manual_seed(5))
        b = t.sample(x, torch.Generator().manual_seed(5))
        key = next(iter(a))
        assert torch.equal(a[key], b[key])
        assert len({tuple(v.flatten().tolist()) for v in a[key].view(16, -1)}) > 1
        y1 = t(x, generator=torch.Generator().manual_seed(3))
        y2 = t(x, generator=torch.Generator().manual_seed(3))
        assert torch.equal(y1, y2) and y1.dtype == torch.uint8


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError):
        RandomRotation(10, expand=True)
    with pytest.raises(ConfigError):
        RandomResizedCrop(10, interpolation="bicubic")
    with pytest.raises(ConfigError):
        HorizontalFlip(p=1.5)
