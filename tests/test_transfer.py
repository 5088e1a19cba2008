"""Transfer learning: strategies, frozen BatchNorm statistics, progressive unfreezing, per-stage LRs."""

import pytest
import torch

import cnnkit
from cnnkit import transfer
from cnnkit.engine.callbacks import ProgressiveUnfreezing
from cnnkit.engine.optim import build_optimizer


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return cnnkit.create_model("resnet18", num_classes=4)


def trainable_stages(model):
    params = dict(model.named_parameters())
    return [
        s
        for s, names in transfer.stage_modules(model).items()
        if names and all(params[n].requires_grad for n in names)
    ]


def test_stage_names_follow_the_feature_contract(resnet):
    names = transfer.stage_names(resnet)
    assert names[-1] == "head"
    assert [n for n in names if n.startswith("layer")] == ["layer1", "layer2", "layer3", "layer4"]
    groups = transfer.stage_modules(resnet)
    # The stem belongs to the first stage (the map after the stem's activation).
    assert "conv1.weight" in groups[names[0]] and names[0] not in ("layer1", "head")
    assert groups["head"] == ["fc.weight", "fc.bias"]
    assert sum(len(v) for v in groups.values()) == len(list(resnet.parameters()))


def test_feature_extractor_trains_only_the_head(resnet):
    transfer.apply_strategy(resnet, "feature_extractor")
    assert trainable_stages(resnet) == ["head"]


def test_fine_tune_trains_head_and_last_stage_by_default(resnet):
    transfer.apply_strategy(resnet, "fine_tune")
    assert trainable_stages(resnet) == ["layer4", "head"]
    transfer.apply_strategy(resnet, "fine_tune", unfreeze=["layer3", "layer4"])
    assert trainable_stages(resnet) == ["layer3", "layer4", "head"]


def test_unknown_stage_or_strategy_is_a_config_error(resnet):
    with pytest.raises(cnnkit.ConfigError, match="'layer4'"):
        transfer.freeze(resnet, until="layer5")
    with pytest.raises(cnnkit.ConfigError, match="feature_extractor"):
        transfer.apply_strategy(resnet, "frozen")


def test_frozen_batchnorm_statistics_do_not_move(resnet):
    transfer.freeze(resnet, until="layer3")
    resnet.train()
    frozen_bn = resnet.layer3[0].bn1
    live_bn = resnet.layer4[0].bn1
    before_frozen = frozen_bn.running_mean.clone()
    before_live = live_bn.running_mean.clone()
    opt = build_optimizer(resnet, "sgd", 0.1)
    for _ in range(2):
        loss = resnet(torch.randn(4, 3, 64, 64) * 3 + 1).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(frozen_bn.running_mean, before_frozen)
    assert not frozen_bn.training
    assert not torch.equal(live_bn.running_mean, before_live)
    assert frozen_bn.weight.grad is None
    # The frozen BatchNorm keeps its state_dict layout, so checkpoints load into a plain model.
    assert set(resnet.state_dict()) == set(cnnkit.create_model("resnet18", num_classes=4).state_dict())
    transfer.unfreeze(resnet)
    resnet.train()
    assert type(frozen_bn) is torch.nn.BatchNorm2d and frozen_bn.training


def test_param_groups_discriminative_lrs(resnet):
    groups = transfer.param_groups(resnet, weight_decay=0.01, backbone_lr_scale=0.1, stage_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(resnet.fc.weight)]["lr_scale"] == 1.0
    assert by_param[id(resnet.layer4[0].conv1.weight)]["lr_scale"] == pytest.approx(0.1)
    assert by_param[id(resnet.layer3[0].conv1.weight)]["lr_scale"] == pytest.approx(0.05)
    assert by_param[id(resnet.conv1.weight)]["lr_scale"] == pytest.approx(0.1 * 0.5**4)  # stage 0 of 5
    assert by_param[id(resnet.bn1.weight)]["weight_decay"] == 0.0
    assert by_param[id(resnet.conv1.weight)]["weight_decay"] == 0.01
    assert len(by_param) == len(list(resnet.parameters()))
    opt = build_optimizer(groups, "sgd", lr=0.2)
    assert {round(g["lr"], 6) for g in opt.param_groups} >= {0.2, 0.02, 0.01}


class _FakeTrainer:
    def __init__(self, model):
        self.model = model
        self.epoch = 0


def test_progressive_unfreezing_goes_top_to_bottom(resnet):
    transfer.apply_strategy(resnet, "feature_extractor")
    cb = ProgressiveUnfreezing(every=2)
    trainer = _FakeTrainer(resnet)
    cb.on_fit_start(trainer)
    seen = []
    for epoch in range(8):
        trainer.epoch = epoch
        cb.on_epoch_start(trainer)
        seen.append(trainable_stages(resnet)[0])
    assert seen == ["head", "head", "layer4", "layer4", "layer3", "layer3", "layer2", "layer2"]


def test_lenet_stages_put_the_convolutions_before_the_head():
    groups = transfer.stage_modules(cnnkit.create_model("lenet5"))
    convs = [n for stage, names in groups.items() if stage != "head" for n in names]
    assert convs == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]


TASK_MODELS = [
    ("segmentation", "unet"),
    ("segmentation", "deeplabv3"),
    ("detection", "yolo"),
    ("detection", "yolo_grid"),
    ("detection", "faster_rcnn"),
]


@pytest.mark.parametrize(("task", "name"), TASK_MODELS)
def test_task_model_stages_are_its_backbone_classifiers(task, name):
    from cnnkit.engine.build import build_model
    from cnnkit.engine.config import TrainConfig

    torch.manual_seed(0)
    model = build_model(TrainConfig(task=task, model=name, backbone="resnet18"), ["a", "b"], 3)
    owner = transfer.stage_owner(model)
    assert isinstance(owner, type(cnnkit.create_model("resnet18"))) and owner is not model
    assert transfer.stage_names(model)[-3:] == ["layer3", "layer4", "head"]

    transfer.apply_strategy(model, "fine_tune", unfreeze=["layer4"])
    assert transfer.frozen_stages(model) == transfer.stage_names(model)[:-2]
    inside = {id(p) for p in owner.parameters()}
    outside = [p for p in model.parameters() if id(p) not in inside]
    assert outside and all(p.requires_grad for p in outside)  # neck, decoder and heads still train
    assert all(p.requires_grad for p in owner.layer4.parameters())
    assert not any(p.requires_grad for p in owner.layer3.parameters())
    model.train()
    assert not owner.layer3[0].bn1.training and owner.layer4[0].bn1.training  # frozen BN keeps its statistics


def test_progressive_unfreezing_of_a_segmenter_walks_its_backbone():
    from cnnkit import create_model

    model = create_model("unet", num_classes=3, backbone="resnet18")
    transfer.set_trainable(model.backbone, False)
    cb = ProgressiveUnfreezing(every=1)
    trainer = _FakeTrainer(model)
    cb.on_fit_start(trainer)
    seen = []
    for epoch in range(3):
        trainer.epoch = epoch
        cb.on_epoch_start(trainer)
        seen.append([s for s in transfer.stage_names(model)[:-1] if s not in transfer.frozen_stages(model)])
    assert seen == [[], ["layer4"], ["layer3", "layer4"]]


def test_a_model_without_a_backbone_classifier_has_no_stages():
    from cnnkit import create_model

    with pytest.raises(cnnkit.ConfigError, match="no backbone classifier"):
        transfer.stage_names(create_model("unet", num_classes=3))
