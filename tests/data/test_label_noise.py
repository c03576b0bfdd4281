"""Label noise: exact counts, injected labels always wrong, determinism, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from vp_testing import rel_err

from visprompt.data.noise import (
    NOISE_TYPES,
    class_name_similarity,
    inject_noise,
    noisy_count,
    relabel,
    semantic_flip_targets,
)
from visprompt.data.types import Sample
from visprompt.errors import VispromptError

K = 10
LABELS = np.repeat(np.arange(K), 16)  # a 16-shot training set, N = 160
SIM = np.random.default_rng(0).normal(size=(K, K))
SIM = SIM + SIM.T


def test_noise_types_are_the_documented_five():
    assert NOISE_TYPES == ("none", "real", "sym", "asym", "asym-semantic")


@pytest.mark.parametrize("noise_type", ["sym", "asym", "asym-semantic"])
@pytest.mark.parametrize("rate", [0.0, 0.125, 0.25, 0.5, 0.75, 0.3])
def test_exact_count_and_every_injected_label_is_wrong(noise_type, rate):
    out = inject_noise(LABELS, K, noise_type, rate, seed=1, similarity=SIM)
    expected = math.floor(rate * len(LABELS))
    assert out.count == expected == int(out.is_noisy.sum())
    assert out.rate == pytest.approx(expected / len(LABELS))
    np.testing.assert_array_equal(out.true, LABELS)
    assert (out.noisy[out.is_noisy] != out.true[out.is_noisy]).all()
    np.testing.assert_array_equal(out.noisy[~out.is_noisy], LABELS[~out.is_noisy])
    assert out.noisy.dtype == np.int64 and out.is_noisy.dtype == bool
    assert out.noisy.min() >= 0 and out.noisy.max() < K


def test_floor_uses_the_written_decimal():
    assert noisy_count(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in floats
    assert noisy_count(0.125, 160) == 20 and noisy_count(0.7, 3) == 2
    assert inject_noise(np.arange(100) % K, K, "sym", 0.29, seed=0).count == 29


def test_asym_is_the_pair_flip():
    out = inject_noise(LABELS, K, "asym", 0.5, seed=2)
    flipped = out.is_noisy
    np.testing.assert_array_equal(out.noisy[flipped], (LABELS[flipped] + 1) % K)


def test_asym_semantic_goes_to_the_most_similar_other_class():
    out = inject_noise(LABELS, K, "asym-semantic", 0.5, seed=2, similarity=SIM)
    masked = SIM.copy()
    np.fill_diagonal(masked, -np.inf)
    for y_true, y_noisy in zip(out.true[out.is_noisy], out.noisy[out.is_noisy], strict=True):
        assert y_noisy == int(np.argmax(masked[y_true]))
    assert (semantic_flip_targets(SIM) != np.arange(K)).all()


def test_sym_reaches_every_other_class_roughly_uniformly():
    labels = np.zeros(4000, dtype=int)
    out = inject_noise(labels, 5, "sym", 0.5, seed=0)
    counts = np.bincount(out.noisy[out.is_noisy], minlength=5)
    assert counts[0] == 0
    assert all(400 < c < 600 for c in counts[1:])  # 500 expected each, sd about 19


@pytest.mark.parametrize("noise_type", ["sym", "asym", "asym-semantic"])
def test_same_seed_same_noise_other_seed_other_noise(noise_type):
    a = inject_noise(LABELS, K, noise_type, 0.25, seed=5, similarity=SIM)
    b = inject_noise(LABELS, K, noise_type, 0.25, seed=5, similarity=SIM)
    c = inject_noise(LABELS, K, noise_type, 0.25, seed=6, similarity=SIM)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    np.testing.assert_array_equal(a.is_noisy, b.is_noisy)
    assert not np.array_equal(a.is_noisy, c.is_noisy)


def test_none_and_real_change_nothing():
    for noise_type in ("none", "real"):
        out = inject_noise(LABELS, K, noise_type, 0.0, seed=1)
        np.testing.assert_array_equal(out.noisy, LABELS)
        assert out.count == 0 and out.rate == 0.0
    with pytest.raises(ValueError):
        out.noisy[0] = 3  # results are read-only


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1, float("nan")])
def test_rate_out_of_range(rate):
    with pytest.raises(VispromptError, match=r"noise rate .* is outside \[0, 1\); set noise.rate"):
        inject_noise(LABELS, K, "sym", rate, seed=1)


def test_unknown_type_none_with_rate_and_one_class():
    with pytest.raises(VispromptError) as exc:
        inject_noise(LABELS, K, "pairflip", 0.2, seed=1)
    assert str(exc.value) == (
        "unknown noise type 'pairflip'; choose one of none, real, sym, asym, asym-semantic"
    )
    for quiet in ("none", "real"):  # the rule the config layer applies too
        with pytest.raises(VispromptError, match=f"noise type '{quiet}' injects no noise, so its"):
            inject_noise(LABELS, K, quiet, 0.2, seed=1)
    with pytest.raises(VispromptError, match="noise type 'sym' needs at least 2 classes"):
        inject_noise(np.zeros(8, dtype=int), 1, "sym", 0.25, seed=1)


def test_negative_seed():
    with pytest.raises(VispromptError, match="seed -3 is not a whole number >= 0"):
        inject_noise(LABELS, K, "sym", 0.25, seed=-3)


def test_asym_semantic_needs_a_similarity():
    with pytest.raises(ValueError, match="needs the \\(K, K\\) class similarity"):
        inject_noise(LABELS, K, "asym-semantic", 0.25, seed=1)


def test_relabel_keeps_paths_and_sets_class_names():
    samples = [Sample(f"/x/{i}.jpg", i % 2, f"c{i % 2}") for i in range(4)]
    out = relabel(samples, [1, 1, 0, 0], ("c0", "c1"))
    assert [s.path for s in out] == [s.path for s in samples]
    assert [(s.label, s.classname) for s in out] == [(1, "c1"), (1, "c1"), (0, "c0"), (0, "c0")]


def test_class_name_similarity_with_the_tiny_backbone():
    from visprompt.backbone import load_backbone

    backbone = load_backbone(name="tiny-vit", device="cpu")
    names = ["golden_retriever", "tabby cat", "airliner"]
    sim = class_name_similarity(backbone, names)
    feats = backbone.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in names])
    assert rel_err(sim, (feats @ feats.T).double()) < 1e-6
    assert rel_err(np.diag(sim), np.ones(3)) < 1e-6
    assert sim.shape == (3, 3) and rel_err(sim, sim.T) < 1e-6
    targets = semantic_flip_targets(sim)
    assert (targets != np.arange(3)).all()
