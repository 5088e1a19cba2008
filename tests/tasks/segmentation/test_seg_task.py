import pytest
import torch
import torch.nn.functional as F

from cnnkit.augment.geometric import HorizontalFlip
from cnnkit.data import MNISTSegmentation, collate_detection
from cnnkit.errors import ConfigError, DataError
from cnnkit.tasks.segmentation import SegmentationEvaluator, SegmentationTask, UNet, dice_loss, focal_loss

CPU = torch.device("cpu")


def batch(generator, b=2, size=(6, 5)):
    images = torch.randint(0, 256, (b, 1, *size), dtype=torch.uint8, generator=generator)
    targets = [{"mask": torch.randint(0, 3, size, generator=generator)} for _ in range(b)]
    targets[0]["mask"][0, 0] = 255
    return images, targets


def test_prepare_normalizes_and_stacks_masks(generator):
    images, targets = batch(generator)
    task = SegmentationTask(None, ["c1", "c2"], mean=(0.5,), std=(0.25,))
    x, masks = task.prepare((images, targets), train=False, device=CPU)
    torch.testing.assert_close(x, (images.float() / 255 - 0.5) / 0.25)
    assert masks.dtype == torch.int64 and torch.equal(masks, torch.stack([t["mask"] for t in targets]))


def test_prepare_moves_masks_with_augmented_images(generator):
    images, targets = batch(generator)
    task = SegmentationTask(None, ["c1", "c2"], mean=(0.0,), std=(1.0,), augment=HorizontalFlip(p=1.0))
    x, masks = task.prepare((images, targets), train=True, device=CPU, generator=generator)
    torch.testing.assert_close(x, images.flip(-1).float() / 255)
    assert torch.equal(masks, torch.stack([t["mask"] for t in targets]).flip(-1))
    x, _ = task.prepare((images, targets), train=False, device=CPU)
    torch.testing.assert_close(x, images.float() / 255)  # no augmentation outside training


def test_prepare_rejects_images_of_different_sizes():
    task = SegmentationTask(None, ["c1"], mean=(0.0,), std=(1.0,))
    with pytest.raises(DataError, match="one size"):
        task.prepare(([torch.zeros(1, 2, 2), torch.zeros(1, 3, 3)], []), train=False, device=CPU)


def test_criterion_variants(generator):
    logits = torch.randn(2, 3, 6, 5, generator=generator)
    _, targets = batch(generator)
    masks = torch.stack([t["mask"] for t in targets])
    ce = F.cross_entropy(logits, masks, ignore_index=255)
    out = SegmentationTask(None, ["c1", "c2"], (0.0,), (1.0,)).criterion(logits, masks)
    torch.testing.assert_close(out["loss"], ce)
    out = SegmentationTask(None, ["c1", "c2"], (0.0,), (1.0,), loss="ce+dice").criterion(logits, masks)
    torch.testing.assert_close(out["dice"], dice_loss(logits, masks))
    torch.testing.assert_close(out["loss"], ce + out["dice"])
    out = SegmentationTask(None, ["c1", "c2"], (0.0,), (1.0,), loss="focal", focal_gamma=1.5).criterion(
        logits, masks
    )
    torch.testing.assert_close(out["loss"], focal_loss(logits, masks, gamma=1.5))
    with pytest.raises(ConfigError, match="ce\\+dice"):
        SegmentationTask(None, ["c1", "c2"], (0.0,), (1.0,), loss="lovasz")


def test_postprocess_and_evaluator(generator):
    task = SegmentationTask(None, ["c1", "c2"], (0.0,), (1.0,), ignore_index=7)
    logits = torch.randn(2, 3, 4, 4, generator=generator)
    assert torch.equal(torch.stack([p.mask for p in task.postprocess(logits)]), logits.argmax(1))
    evaluator = task.evaluator()
    assert isinstance(evaluator, SegmentationEvaluator) and evaluator.ignore_index == 7


@pytest.mark.slow
def test_tiny_unet_overfits_two_mnist_seg_images():
    torch.manual_seed(0)
    dataset = MNISTSegmentation("train", size=2, image_size=64, digits=(1, 2), seed=0)
    task = SegmentationTask(
        None,
        ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10"],
        mean=(0.5,),
        std=(0.5,),
        loss="ce+dice",
    )
    images, masks = task.prepare(collate_detection([dataset[0], dataset[1]]), train=True, device=CPU)
    model = UNet(in_chans=1, num_classes=11, base_channels=8, depth=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def evaluate() -> float:
        model.eval()
        evaluator = task.evaluator()
        with torch.no_grad():
            evaluator.update(model(images), masks)
        model.train()
        return evaluator.compute()["miou"]

    before = evaluate()
    for _ in range(120):
        loss = task.criterion(model(images), masks)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.5
    assert evaluate() > 0.8


def test_criterion_adds_the_weighted_aux_loss():
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    masks = torch.randint(0, 3, (2, 8, 8))
    task = SegmentationTask(None, ["c1", "c2"], mean=(0.5,), std=(0.5,), loss="ce+dice", aux_weight=0.4)
    main, side = task.criterion(logits, masks), task.criterion(aux, masks)
    both = task.criterion((logits, aux), masks)
    torch.testing.assert_close(both["loss"], main["loss"] + 0.4 * side["loss"])
    torch.testing.assert_close(both["aux"], side["loss"])
    torch.testing.assert_close(both["ce"], main["ce"])


def test_deep_supervision_averages_the_heads_losses(generator):
    task = SegmentationTask(None, ["c1", "c2"], (0.0,), (1.0,), loss="ce+dice")
    masks = torch.randint(0, 3, (2, 8, 8), generator=generator)
    heads = [torch.randn(2, 3, 8, 8, generator=generator) for _ in range(3)]
    each = [task.criterion(logits, masks)["loss"] for logits in heads]
    losses = task.criterion(heads, masks)
    assert torch.isclose(losses["loss"], sum(each) / 3)
    assert [losses[f"head{k}"].item() for k in (1, 2, 3)] == [e.item() for e in each]
