"""FCN and DeepLabV3 share torchvision's state_dict layout (fcn_resnet50 / deeplabv3_resnet50), with and without the aux head."""

import pytest
import torch
import torchvision.models.segmentation as tvs

from cnnkit.tasks.segmentation import deeplabv3_resnet50, fcn_resnet50

PAIRS = [(fcn_resnet50, tvs.fcn_resnet50), (deeplabv3_resnet50, tvs.deeplabv3_resnet50)]


@pytest.mark.parametrize("aux_loss", [False, True], ids=["no_aux", "aux"])
@pytest.mark.parametrize("ours_fn, theirs_fn", PAIRS, ids=["fcn", "deeplabv3"])
def test_same_parameter_names_and_shapes(ours_fn, theirs_fn, aux_loss):
    with torch.device("meta"):
        theirs = theirs_fn(weights=None, weights_backbone=None, aux_loss=aux_loss, num_classes=7)
        ours = ours_fn(num_classes=7, aux_loss=aux_loss)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("ours_fn, theirs_fn", PAIRS, ids=["fcn", "deeplabv3"])
def test_same_outputs_after_loading_torchvision_weights(ours_fn, theirs_fn):
    torch.manual_seed(0)
    theirs = theirs_fn(weights=None, weights_backbone=None, aux_loss=False, num_classes=5).eval()
    for name, buffer in theirs.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
    ours = ours_fn(num_classes=5).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x)["out"])


@pytest.mark.slow
@pytest.mark.parametrize("ours_fn, theirs_fn", PAIRS, ids=["fcn", "deeplabv3"])
def test_aux_logits_equal_torchvisions_in_training_mode(ours_fn, theirs_fn):
    torch.manual_seed(0)
    theirs = theirs_fn(weights=None, weights_backbone=None, aux_loss=True, num_classes=5)
    ours = ours_fn(num_classes=5, aux_loss=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for model in (ours, theirs):  # training mode (batch statistics), dropout off on both sides
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        logits, aux = ours(x)
        expected = theirs(x)
    torch.testing.assert_close(logits, expected["out"])
    torch.testing.assert_close(aux, expected["aux"])
    assert isinstance(ours.eval()(x), torch.Tensor)  # eval mode: the logits alone, no aux branch
