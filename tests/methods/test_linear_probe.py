"""linear-probe: the fitted classifier is scikit-learn's at the chosen C, fitted on train and
chosen on val; its logits are the decision function on normalised features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from vp_testing import rel_err

from visprompt.backbone import load_backbone
from visprompt.data.features import FeatureBatch, SplitFeatures
from visprompt.data.types import Sample
from visprompt.data.validation_split import ValidationSplit
from visprompt.methods import METHOD_REGISTRY
from visprompt.methods.fitted import FitData
from visprompt.methods.linear_probe import fit_logistic

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(name="tiny-vit", device="cpu")


def blobs(n_per_class: int, dim: int, seed: int, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(CLASSES), dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(labels.numel(), dim, generator=g)
    return x, labels


def val_split(image: torch.Tensor, labels: torch.Tensor) -> ValidationSplit:
    samples = tuple(Sample(f"/v/{i}.png", int(y), CLASSES[int(y)]) for i, y in enumerate(labels))
    return ValidationSplit(
        samples=samples,
        num_classes=len(CLASSES),
        cache=None,
        _features=SplitFeatures(image=image, ok=torch.ones(len(samples), dtype=torch.bool)),
    )


def probe(backbone, x, y, xv, yv, **options):
    entry = METHOD_REGISTRY.get("linear-probe")
    method = entry.cls(backbone, CLASSES, entry.config_cls(name="linear-probe", **options))
    method.fit_data(
        FitData(
            SplitFeatures(image=x, ok=torch.ones(len(y), dtype=torch.bool)), y, val_split(xv, yv)
        )
    )
    return method


def test_the_probe_is_sklearns_logistic_regression_at_the_chosen_c(backbone):
    d = backbone.embed_dim
    x, y = blobs(6, d, seed=1, spread=1.5)
    xv, yv = blobs(3, d, seed=2, spread=1.5)
    method = probe(backbone, x, y, xv, yv, search_steps=3)
    search = method.fit()
    xn = F.normalize(x, dim=-1).double().numpy()
    clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=search.chosen).fit(xn, y.numpy())
    xt, _ = blobs(4, d, seed=3, spread=1.5)
    ours = method(FeatureBatch(xt))
    theirs = clf.decision_function(F.normalize(xt, dim=-1).double().numpy())
    assert rel_err(ours, theirs) < 1e-4
    # softmax of the logits is scikit-learn's predict_proba
    proba = clf.predict_proba(F.normalize(xt, dim=-1).double().numpy())
    assert rel_err(ours.softmax(-1), proba) < 1e-4
    # the val accuracy the search reports is the chosen classifier's on val
    acc = (clf.predict(F.normalize(xv, dim=-1).double().numpy()) == yv.numpy()).mean()
    assert search.accuracy == pytest.approx(acc)


def test_fit_on_train_choose_on_val(backbone, monkeypatch):
    """Every C is fitted on the training split and scored on the val split's given labels."""
    import visprompt.methods.linear_probe as lp

    d = backbone.embed_dim
    x, y = blobs(6, d, seed=1, spread=2.0)
    xv, yv = blobs(3, d, seed=2, spread=2.0)
    yv_given = yv.clone()
    yv_given[:3] = (yv[:3] + 1) % 3  # noisy val labels: the score uses them, not the true ones
    seen = []
    real_fit = lp.fit_logistic
    monkeypatch.setattr(
        lp, "fit_logistic", lambda a, b, *r: seen.append((a, b)) or real_fit(a, b, *r)
    )
    search = probe(backbone, x, y, xv, yv_given, search_steps=2).fit()
    xn, xvn = (F.normalize(t, dim=-1).double().numpy() for t in (x, xv))
    assert all(np.array_equal(a, xn) and np.array_equal(b, y.numpy()) for a, b in seen)
    for c, acc in search.coarse + [(s[0], s[1]) for s in search.steps]:
        clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(xn, y.numpy())
        assert acc == pytest.approx((clf.predict(xvn) == yv_given.numpy()).mean())
    assert len(seen) == len(
        {c for c, _ in search.coarse} | {s[0] for s in search.steps} | {s[2] for s in search.steps}
    )


def test_two_classes_and_a_class_no_label_names():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 6, generator=g).double().numpy()
    y = np.array([0, 2] * 6)  # class 1 absent
    w, b, _ = fit_logistic(x, y, 1.0, 3)
    clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=1.0).fit(x, y)
    logits = torch.as_tensor(x @ w.T + b)
    assert rel_err(logits.softmax(-1)[:, [0, 2]], clf.predict_proba(x)) < 1e-6
    assert (logits.argmax(1).numpy() == clf.predict(x)).all()
    assert (logits[:, 1] < -1e3).all()  # never predicted, finite in a checkpoint


def test_a_run_fits_without_torch_warning_about_the_schedule(colour_dataset, tmp_path):
    import warnings

    from vp_testing import run_overrides

    from visprompt.config import load_run_config
    from visprompt.engine.run import train_run

    cfg = load_run_config(
        None, run_overrides(colour_dataset, "linear-probe", **{"optim.epochs": 2})
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_run(cfg, tmp_path / "run", progress=False, log=lambda message: None)
    assert result["test_accuracy"] > 25.0  # 4 classes: better than chance
    assert not [
        (w.filename, w.lineno, str(w.message)) for w in caught if "lr_scheduler" in str(w.message)
    ]
