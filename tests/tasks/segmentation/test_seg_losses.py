import math

import pytest
import torch
import torch.nn.functional as F

from cnnkit.tasks.segmentation.losses import cross_entropy, dice_loss, focal_loss


def logits_from_probs(*pixels):
    """(1, K, 1, P) logits whose softmax gives the listed per-pixel probabilities."""
    return torch.tensor(pixels, dtype=torch.float32).log().T.reshape(1, len(pixels[0]), 1, len(pixels))


def test_cross_entropy_equals_torch_and_handles_all_ignored(generator):
    logits = torch.randn(2, 4, 5, 6, generator=generator)
    target = torch.randint(0, 4, (2, 5, 6), generator=generator)
    target[0, :2] = 255
    torch.testing.assert_close(
        cross_entropy(logits, target), F.cross_entropy(logits, target, ignore_index=255)
    )
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    torch.testing.assert_close(
        cross_entropy(logits, target, weight=w), F.cross_entropy(logits, target, weight=w, ignore_index=255)
    )
    logits.requires_grad_(True)
    loss = cross_entropy(logits, torch.full_like(target, 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_dice_loss_by_hand():
    # pixel 0: p = (0.8, 0.2), true 0; pixel 1: p = (0.4, 0.6), true 1; pixel 2 ignored
    logits = logits_from_probs((0.8, 0.2), (0.4, 0.6), (0.1, 0.9))
    target = torch.tensor([[[0, 1, 255]]])
    # class 0: 2 * 0.8 / (0.8 + 0.4 + 1); class 1: 2 * 0.6 / (0.2 + 0.6 + 1)
    expected = 1 - (1.6 / 2.2 + 1.2 / 1.8) / 2
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(expected, rel=1e-6)
    expected_smooth = 1 - (2.6 / 3.2 + 2.2 / 2.8) / 2
    assert dice_loss(logits, target, smooth=1.0).item() == pytest.approx(expected_smooth, rel=1e-6)


def test_dice_loss_near_zero_when_right_and_grad_flows(generator):
    target = torch.randint(0, 3, (2, 4, 4), generator=generator)
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(perfect, target).item() < 1e-6
    logits = torch.randn(2, 3, 4, 4, generator=generator, requires_grad=True)
    loss = dice_loss(logits, target)
    loss.backward()
    assert 0 < loss.item() < 1 and logits.grad.abs().sum() > 0


def one_hot_dice(logits, target, ignore_index=255, smooth=1.0):
    """The Dice loss written with the one-hot target, term for term as its formula reads."""
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    probs = logits.softmax(1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid.unsqueeze(
        1
    )
    intersection = (probs * onehot).sum((0, 2, 3))
    cardinality = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * intersection + smooth) / (cardinality + smooth)).mean()


@pytest.mark.parametrize("ignored", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dice_loss_and_its_gradient_equal_the_one_hot_formula(generator, ignored, channels_last):
    logits = torch.randn(3, 5, 7, 9, generator=generator)
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 4, (3, 7, 9), generator=generator)  # class 4 absent: its count is 0
    if ignored:
        target[1, 2:5] = 255
    for ignore_index in (255, None) if not ignored else (255,):
        ours, reference = (logits.clone().requires_grad_(True) for _ in range(2))
        loss = dice_loss(ours, target, ignore_index)
        expected = one_hot_dice(reference, target, ignore_index)
        torch.testing.assert_close(loss, expected)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(ours.grad, reference.grad)
    everything_ignored = logits.clone().requires_grad_(True)
    loss = dice_loss(everything_ignored, torch.full_like(target, 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(everything_ignored.grad == 0)


def test_focal_loss_by_hand_and_against_cross_entropy(generator):
    logits = logits_from_probs((0.8, 0.2), (0.4, 0.6))
    target = torch.tensor([[[0, 0]]])
    expected = (-(0.2**2) * math.log(0.8) - (0.6**2) * math.log(0.4)) / 2
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected, rel=1e-6)
    alpha = torch.tensor([0.25, 0.75])
    assert focal_loss(logits, target, gamma=2.0, alpha=alpha).item() == pytest.approx(
        0.25 * expected, rel=1e-6
    )
    assert focal_loss(logits, target, gamma=2.0, alpha=0.5).item() == pytest.approx(0.5 * expected, rel=1e-6)

    logits = torch.randn(2, 5, 6, 7, generator=generator)
    target = torch.randint(0, 5, (2, 6, 7), generator=generator)
    target[1, 3:] = 255
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target, ignore_index=255)
    )
    w = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.1])
    weighted_sum = F.cross_entropy(logits, target, weight=w, ignore_index=255, reduction="sum")
    count = (target != 255).sum()
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0, alpha=w), weighted_sum / count)
    assert focal_loss(logits, target, gamma=2.0) < F.cross_entropy(logits, target, ignore_index=255)


def test_losses_check_shapes():
    with pytest.raises(ValueError, match="disagree"):
        dice_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 4, dtype=torch.int64))
