"""Trainer behaviour: exact resume, Ctrl-C, NaN stop, early stopping, accumulation, files of a run."""

import csv

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cnnkit.data.loader import BatchLoader
from cnnkit.data.sampler import EpochSampler
from cnnkit.engine.callbacks import CheckpointCallback
from cnnkit.engine.checkpoint import load_checkpoint
from cnnkit.engine.config import load_config
from cnnkit.engine.optim import build_optimizer
from cnnkit.engine.run import resume, train
from cnnkit.engine.trainer import Callback, NonFiniteLossError, Trainer, to_channels_last
from cnnkit.tasks.classification import ClassificationTask

SMALL = [
    "data.train_size=256",
    "data.val_size=128",
    "data.batch_size=32",
    "epochs=3",
    "plots=false",
    "progress=false",
]


def small_config(run_dir, *extra):
    return load_config(None, [*SMALL, f"output_dir={run_dir}", *extra])


class InterruptAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, loss):
        if trainer.step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("extra", [(), ("ema_decay=0.9", "accumulate=3")], ids=["plain", "ema-accumulate"])
def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, extra):
    full = train(small_config(tmp_path / "full", *extra))
    with pytest.raises(KeyboardInterrupt):
        train(small_config(tmp_path / "cut", *extra), callbacks=[InterruptAtStep(2 if extra else 10)])
    resumed = resume(tmp_path / "cut")
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert [r["accuracy"] for r in resumed.history] == [r["accuracy"] for r in full.history]
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_contents(tmp_path):
    result = train(small_config(tmp_path / "run", "epochs=2", "plots=true"))
    names = {p.name for p in result.dir.iterdir()}
    expected = {"config.yaml", "metrics.csv", "last.safetensors", "best.safetensors", "trainer_state.json"}
    assert expected | {"curves.png", "confusion_matrix.png", "predictions.png"} <= names
    rows = list(csv.DictReader(open(result.dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert 0.0 <= float(rows[-1]["accuracy"]) <= 1.0
    _, _, meta = load_checkpoint(result.dir / "last.safetensors")
    assert meta["epoch"] == 2 and meta["classes"] == [str(d) for d in range(10)]


class _Data:
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 255, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.labels)


class _NaNAtStep(ClassificationTask):
    def __init__(self, bad_step):
        super().__init__(None, ["a", "b", "c"], (0.5,), (0.25,))
        self.calls = 0
        self.bad_step = bad_step

    def criterion(self, outputs, targets):
        self.calls += 1
        loss = super().criterion(outputs, targets)["loss"]
        return {"loss": loss * float("nan") if self.calls == self.bad_step else loss}


def _tiny_trainer(tmp_path, task, epochs=2, callbacks=()):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    data = _Data()
    loader = BatchLoader(data, EpochSampler(len(data), 16, seed=0))
    val = BatchLoader(data, EpochSampler(len(data), 64, shuffle=False))
    ckpt = CheckpointCallback(tmp_path, "accuracy")
    return Trainer(
        model,
        task,
        loader,
        val,
        build_optimizer(model, "sgd", 0.1),
        epochs=epochs,
        callbacks=[ckpt, *callbacks],
    )


def test_nonfinite_loss_names_the_step_and_keeps_last_good_checkpoint(tmp_path):
    trainer = _tiny_trainer(tmp_path, _NaNAtStep(bad_step=6), epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 6"):
        trainer.fit()
    _, _, meta = load_checkpoint(tmp_path / "last.safetensors")
    assert meta["epoch"] == 1 and meta["step"] == 4


def test_early_stopping_stops(tmp_path):
    from cnnkit.engine.callbacks import EarlyStopping

    stopper = EarlyStopping("loss", patience=1)
    stopper.best = -1.0  # nothing can beat a negative loss
    trainer = _tiny_trainer(
        tmp_path, ClassificationTask(None, ["a", "b", "c"], (0.5,), (0.25,)), epochs=5, callbacks=[stopper]
    )
    history = trainer.fit()
    assert len(history) == 1


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    def run(batch, accumulate):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        data = _Data(32)
        loader = BatchLoader(data, EpochSampler(len(data), batch, shuffle=False))
        opt = build_optimizer(model, "sgd", 0.1, momentum=0.0)
        Trainer(
            model,
            ClassificationTask(None, ["a", "b", "c"], (0.5,), (0.25,)),
            loader,
            None,
            opt,
            accumulate=accumulate,
        ).fit()
        return model[1].weight.detach()

    torch.testing.assert_close(run(16, 2), run(32, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_to_channels_last_gives_even_a_grey_batch_nhwc_strides(channels):
    batch = torch.randn(2, channels, 5, 7)
    nhwc = to_channels_last(batch)
    assert torch.equal(nhwc, batch) and nhwc.stride() == (35 * channels, 1, 7 * channels, channels)
    # so that layout propagation keeps NHWC: concatenating it with an NHWC map (a U-Net's input skip)
    features = torch.randn(2, 4, 5, 7).contiguous(memory_format=torch.channels_last)
    merged = torch.cat([features, nhwc], 1)
    assert merged.is_contiguous(memory_format=torch.channels_last) and not merged.is_contiguous()
    plain = torch.cat([features, batch.contiguous(memory_format=torch.channels_last)], 1)
    assert plain.is_contiguous() == (channels == 1)  # what a plain conversion gave a grey batch
    assert to_channels_last(torch.randn(3, 4)).shape == (3, 4)


def test_channels_last_trains_the_same_function_in_nhwc(tmp_path):
    seen = []

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            y = self.conv(x)  # 4 channels: unlike the 1-channel input, its two layouts differ
            seen.append(y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous())
            return self.head(y.mean((2, 3)))

    def run(channels_last):
        torch.manual_seed(0)
        model, data = Conv(), _Data(32)
        loader = BatchLoader(data, EpochSampler(len(data), 8, shuffle=False))
        opt = build_optimizer(model, "sgd", 0.1, momentum=0.0)
        task = ClassificationTask(None, ["a", "b", "c"], (0.5,), (0.25,))
        Trainer(model, task, loader, loader, opt, epochs=2, channels_last=channels_last).fit()
        return model

    nhwc, nchw = run(True), run(False)
    assert nhwc.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(seen[: len(seen) // 2]) and not any(seen[len(seen) // 2 :])  # train and validation batches
    torch.testing.assert_close(nhwc.conv.weight, nchw.conv.weight, rtol=1e-4, atol=1e-5)
