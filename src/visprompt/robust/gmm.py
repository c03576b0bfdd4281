"""A two-component 1-D Gaussian mixture over per-sample losses, and its crossing point.

Loss-based sample selection (DivideMix, JoAPR) fits two Gaussians to the
per-sample training losses: the component with the lower mean models the
correctly labelled ("clean") samples. Two quantities are read off the fit:

* the clean posterior of each sample,
  ``w_i = pi_c N(l_i; m_c, v_c) / (pi_c N(l_i; m_c, v_c) + pi_n N(l_i; m_n, v_n))``;
* the crossing point of the two component densities ``N(x; m_c, v_c)`` and
  ``N(x; m_n, v_n)`` (mixing weights left out, as JoAPR's crossing rule does).

Crossing point. Setting the log densities equal and multiplying by -2 gives
``g(x) = a x^2 + b x + c = 0`` with (v = variance, not standard deviation)::

    a = 1/v_c - 1/v_n,   b = 2 (m_n/v_n - m_c/v_c),
    c = m_c^2/v_c - m_n^2/v_n + log(v_c / v_n),

and ``g < 0`` exactly where the clean density is the larger. Its discriminant
is, identically, ``D = 4 [(m_c - m_n)^2 + (v_c - v_n) log(v_c / v_n)] / (v_c v_n)``,
a sum of non-negative terms: computed in this form it is never negative, so
the root is never NaN (JoAPR's reference code forms ``b^2 - 4ac`` from
variances used as standard deviations and a log term with a stray factor 2,
which can go negative). The crossing returned is ``x* = (-b + sqrt(D)) / (2a)``,
the root where ``g'(x*) = sqrt(D) >= 0``: the point above which, moving to
higher losses, the noisy density overtakes the clean one. With a narrow clean
component (a > 0) it is the larger root, the upper end of the interval where
the clean density dominates; with a broad one (a < 0) it is the smaller root,
the lower end of the interval around the noisy mean where the noisy density
dominates. For equal variances it is the midpoint of the means (a = 0; the
formula is evaluated in a cancellation-free form that has this limit).
Identical components (equal means and variances) have no crossing; the
midpoint of the means is returned then.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from visprompt.errors import VispromptError


@dataclass(frozen=True)
class TwoGaussians:
    """A fitted two-component mixture, clean component first (the lower mean).

    Attributes:
        means: (clean, noisy) component means, clean <= noisy.
        variances: (clean, noisy) component variances (> 0).
        weights: (clean, noisy) mixing proportions (sum to 1).
    """

    means: tuple[float, float]
    variances: tuple[float, float]
    weights: tuple[float, float]

    def __post_init__(self) -> None:
        if self.means[0] > self.means[1]:
            raise ValueError(f"the clean (first) component needs the lower mean, got {self.means}")
        if min(self.variances) <= 0 or not all(math.isfinite(v) for v in self.variances):
            raise ValueError(f"variances must be positive and finite, got {self.variances}")

    def log_densities(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 2) log of ``weight_j * N(x; mean_j, var_j)`` for the clean and noisy component."""
        xs = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        xs = xs.reshape(-1, 1)
        m = np.asarray(self.means)[None, :]
        v = np.asarray(self.variances)[None, :]
        w = np.asarray(self.weights)[None, :]
        return np.log(w) - 0.5 * (np.log(2 * np.pi * v) + (xs - m) ** 2 / v)

    def clean_posterior(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N,) posterior probability of the clean component for each value (float64)."""
        logd = self.log_densities(x)
        top = logd.max(axis=1, keepdims=True)
        post = np.exp(logd - top)
        return post[:, 0] / post.sum(axis=1)

    def crossing_point(self) -> float:
        """Where the noisy component density overtakes the clean one (module docstring)."""
        return gaussian_crossing(self.means[0], self.variances[0], self.means[1], self.variances[1])


def gaussian_crossing(m_clean: float, v_clean: float, m_noisy: float, v_noisy: float) -> float:
    """The crossing point ``x*`` of ``N(x; m_clean, v_clean)`` and ``N(x; m_noisy, v_noisy)``.

    Args:
        m_clean: mean of the clean (lower-mean) component.
        v_clean: its variance (not standard deviation), > 0.
        m_noisy: mean of the noisy component, >= ``m_clean``.
        v_noisy: its variance, > 0.

    Returns:
        The root of equal densities at which the noisy density starts to exceed
        the clean one going right (see the module docstring); the midpoint of
        the means for identical components. Always finite.
    """
    if v_clean <= 0 or v_noisy <= 0:
        raise ValueError(f"variances must be positive, got {v_clean}, {v_noisy}")
    a = 1.0 / v_clean - 1.0 / v_noisy
    b = 2.0 * (m_noisy / v_noisy - m_clean / v_clean)
    c = m_clean**2 / v_clean - m_noisy**2 / v_noisy + math.log(v_clean / v_noisy)
    disc = (
        4.0
        * ((m_clean - m_noisy) ** 2 + (v_clean - v_noisy) * math.log(v_clean / v_noisy))
        / (v_clean * v_noisy)
    )
    root = math.sqrt(max(disc, 0.0))
    if b > 0:
        # (-b + sqrt(D)) / (2a) == -2c / (b + sqrt(D)); this form has no cancellation and
        # tends to -c / b (the single crossing of equal variances) as a -> 0.
        return -2.0 * c / (b + root)
    if a != 0:
        return (-b + root) / (2.0 * a)
    return 0.5 * (m_clean + m_noisy)  # identical components: no crossing


def fit_two_gaussians(
    values: np.ndarray | torch.Tensor,
    seed: int,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
) -> TwoGaussians:
    """Fit a 2-component 1-D Gaussian mixture with scikit-learn (EM, k-means initialisation).

    Defaults are DivideMix's and JoAPR's (10 EM iterations, tolerance 1e-2,
    5e-4 added to each variance). Stopping at ``max_iter`` before convergence is
    normal here and not warned about.

    Args:
        values: (N,) values, N >= 2, finite.
        seed: seeds the k-means initialisation.
        max_iter, tol, reg_covar: passed to ``sklearn.mixture.GaussianMixture``.

    Returns:
        The mixture with the lower-mean (clean) component first.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = np.asarray(
        values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64
    ).reshape(-1, 1)
    if x.shape[0] < 2:
        raise VispromptError(
            f"a two-component mixture needs at least 2 samples, got {x.shape[0]}; "
            "train on more images"
        )
    if not np.isfinite(x).all():
        raise ValueError("mixture input contains non-finite values")
    gmm = GaussianMixture(
        n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=int(seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x)
    means = gmm.means_.reshape(-1)
    variances = gmm.covariances_.reshape(-1)
    weights = gmm.weights_.reshape(-1)
    order = np.argsort(means, kind="stable")
    return TwoGaussians(
        means=(float(means[order[0]]), float(means[order[1]])),
        variances=(float(variances[order[0]]), float(variances[order[1]])),
        weights=(float(weights[order[0]]), float(weights[order[1]])),
    )


__all__ = ["TwoGaussians", "fit_two_gaussians", "gaussian_crossing"]
