"""The CNN's pure parts: model shapes, metrics (against scikit-learn), augmentation."""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics as skm

from hpcjobs.workloads.cnn.augment import random_affine
from hpcjobs.workloads.cnn.metrics import classification_metrics, confusion_matrix
from hpcjobs.workloads.cnn.model import build_model, loss_fn, predict


@pytest.mark.parametrize("num_classes", [2, 10])
@pytest.mark.parametrize("image_size", [8, 16, 32])
def test_model_output_shape(compose_run, num_classes, image_size):
    cfg = compose_run("model.channels=[8,16,32]", "model.dropout=0.2")
    model = build_model(cfg.model, in_channels=3, image_size=image_size, num_classes=num_classes)
    logits = model(torch.rand(5, 3, image_size, image_size))
    assert logits.shape == (5, 1 if num_classes == 2 else num_classes)
    y = torch.randint(0, num_classes, (5,))
    loss = loss_fn(num_classes)(logits, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    pred = predict(logits, num_classes)
    assert pred.shape == (5,) and pred.dtype == torch.int64
    assert int(pred.min()) >= 0 and int(pred.max()) < num_classes


def test_model_structure_follows_config(compose_run):
    cfg = compose_run(
        "model.channels=[4,8]", "model.kernel_size=5", "model.hidden=7", "model.dropout=0.5"
    )
    model = build_model(cfg.model, in_channels=1, image_size=8, num_classes=3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8] and convs[0].kernel_size == (5, 5)
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8 * 2 * 2, 7), (7, 3)]


def test_binary_predict_thresholds_the_single_logit():
    assert predict(torch.tensor([[-0.5], [0.0], [2.0]]), 2).tolist() == [0, 0, 1]


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_metrics_match_sklearn(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    target = torch.randint(0, num_classes, (200,), generator=g)
    # Mostly right, some noise; for 10 classes leave class 9 out of both (sklearn skips it).
    pred = torch.where(
        torch.rand(200, generator=g) < 0.6,
        target,
        torch.randint(0, num_classes, (200,), generator=g),
    )
    if num_classes == 10:
        target, pred = target.clamp(max=8), pred.clamp(max=8)
    ours = classification_metrics(pred, target, num_classes)
    average = "binary" if num_classes == 2 else "macro"
    t, p = target.numpy(), pred.numpy()
    expected = {
        "accuracy": skm.accuracy_score(t, p),
        "precision": skm.precision_score(t, p, average=average, zero_division=0),
        "recall": skm.recall_score(t, p, average=average, zero_division=0),
        "f1": skm.f1_score(t, p, average=average, zero_division=0),
    }
    assert ours == pytest.approx(expected, abs=1e-12)


def test_metrics_zero_division_is_zero():
    # Binary, never predicting the positive class: precision 0/0 -> 0, like sklearn.
    target, pred = torch.tensor([0, 1, 1, 0]), torch.zeros(4, dtype=torch.int64)
    assert classification_metrics(pred, target, 2) == {
        "accuracy": 0.5,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    assert confusion_matrix(pred, target, 2).tolist() == [[2, 0], [2, 0]]


# --------------------------------------------------------------------------- augmentation


def _augment_cfg(compose_run, **knobs):
    return compose_run(*(f"data.augment.{k}={v}" for k, v in knobs.items())).data.augment


ALL_OFF = {"rotation": 0, "shift": 0, "shear": 0, "zoom": 0, "hflip": False}


def test_augment_is_identity_when_all_knobs_are_zero(compose_run):
    x = torch.rand(4, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert random_affine(x, _augment_cfg(compose_run, **ALL_OFF), g) is x
    assert torch.equal(g.get_state(), state)  # the no-op draws nothing


@pytest.mark.parametrize(
    "knob", [{"rotation": 30}, {"shift": 0.2}, {"shear": 20}, {"zoom": 0.3}, {"hflip": True}, {}]
)
def test_augment_changes_batch_keeps_shape(compose_run, knob):
    # digits default
    aug = _augment_cfg(compose_run, **{**ALL_OFF, **knob}) if knob else compose_run().data.augment
    x = torch.rand(16, 3, 12, 12)
    out = random_affine(x, aug, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert not torch.allclose(out, x)
    # Parameters are drawn per sample: copies of one image come out differently.
    copies = random_affine(x[:1].repeat(16, 1, 1, 1), aug, torch.Generator().manual_seed(1))
    assert not all(torch.allclose(copies[0], other) for other in copies[1:])


def test_augment_hflip_mirrors_exactly(compose_run):
    x = torch.rand(64, 1, 8, 8)
    out = random_affine(
        x, _augment_cfg(compose_run, **{**ALL_OFF, "hflip": True}), torch.Generator().manual_seed(0)
    )
    flipped = torch.tensor([torch.allclose(o, xi.flip(-1), atol=1e-5) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.allclose(o, xi, atol=1e-5) for o, xi in zip(out, x)])
    assert bool((flipped | kept).all()) and 16 < int(flipped.sum()) < 48


def test_augment_deterministic_given_generator(compose_run):
    aug = compose_run("data=imagefolder").data.augment  # every knob on
    x = torch.rand(8, 3, 16, 16)
    a = random_affine(x, aug, torch.Generator().manual_seed(3))
    b = random_affine(x, aug, torch.Generator().manual_seed(3))
    c = random_affine(x, aug, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_stays_on_the_batch_device(compose_run):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    aug = compose_run("data=imagefolder").data.augment
    x = torch.rand(8, 3, 16, 16)
    on_device = random_affine(x.to(device), aug, torch.Generator().manual_seed(5))  # CPU generator
    assert on_device.device.type == device
    assert torch.allclose(
        on_device.cpu(), random_affine(x, aug, torch.Generator().manual_seed(5)), atol=1e-4
    )
