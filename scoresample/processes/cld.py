"""The critically damped Langevin diffusion (CLD): its constants and closed-form linear flows.

The CLD forward process of Dockhorn, Vahdat and Kreis, "Score-based generative modeling with
critically-damped Langevin diffusion" (ICLR 2022), on the phase space u = (x, v), per coordinate:

    dx = beta M^-1 v dt,    dv = -beta (x + Gamma M^-1 v) dt + sqrt(2 Gamma beta) dB,

with M^-1 = 4, Gamma = 1 (critical damping, Gamma^2 = 4 M), constant beta = 4 and v_0 ~ N(0, 0.01 I)
independent of x_0. The stationary law is N(0, I) x N(0, M I).

Per coordinate the drift matrix is F = beta A with A = -kappa I + N, kappa = Gamma M^-1 / 2 = 2 and
N nilpotent (N^2 = 0 exactly at critical damping), so the 2 x 2 matrix exponential is closed form:

    exp(t F) = e^{-kappa beta t} (I + beta t N).

The transition covariance from a point, Q(t) = int_0^t e^{sF} G G^T e^{sF^T} ds with
G G^T = diag(0, 2 Gamma beta), reduces to I_j(t) = int_0^t s^j e^{-2 kappa beta s} ds, j = 0, 1, 2,
computed as regularised incomplete gamma functions (a series at small t, so no cancellation). The
generative (reverse) SDE splits into the linear flow with drift beta [[0, -M^-1], [1, -Gamma M^-1]]
(same closed forms with another nilpotent part; see :func:`reverse_linear_flow`) and the score part
dv = 2 Gamma beta (score_v + M^-1 v) dt, which is what the SSCS sampler in
:mod:`scoresample.kernels.cld` integrates. The exact law of a Gaussian mixture under this process is
:class:`scoresample.targets.CLDMixture`.
"""

from __future__ import annotations

import math

import numpy as np

from scoresample.processes.ou import array_module

__all__ = [
    "MASS_INV",
    "GAMMA",
    "BETA",
    "V0_VAR",
    "STATIONARY_V_VAR",
    "forward_flow",
    "reverse_linear_flow",
]

MASS_INV = 4.0  # M^-1
GAMMA = 1.0  # friction; critical damping Gamma^2 = 4 M
BETA = 4.0  # constant time scaling
V0_VAR = 0.01  # variance of the initial velocity (gamma M with gamma = 0.04)
STATIONARY_V_VAR = 1.0 / MASS_INV  # M
_KAPPA = GAMMA * MASS_INV / 2.0  # the double eigenvalue of A is -kappa
assert abs(GAMMA**2 - 4.0 / MASS_INV) < 1e-12, "the closed forms need critical damping"

# Nilpotent parts (A = -kappa I + N) of the forward drift A = [[0, M^-1], [-1, -Gamma M^-1]] and of
# the reverse linear drift [[0, -M^-1], [1, -Gamma M^-1]]; N e_v is all that Q(t) needs.
_N_FORWARD = np.array([[_KAPPA, MASS_INV], [-1.0, -_KAPPA]])
_N_REVERSE = np.array([[_KAPPA, -MASS_INV], [1.0, -_KAPPA]])


def _gamma_p(a: int, x, xp):
    """Regularised lower incomplete gamma P(a, x) for a = 1, 2, 3, without cancellation.

    P(a, x) = 1 - e^-x sum_{j<a} x^j / j!; for x < 1 the difference cancels, so there the series
    e^-x sum_{k>=0} x^(a+k) / (a+k)! is used (25 terms: error below 1e-25).
    """
    if a == 1:
        return -xp.expm1(-x)
    term = x**a / math.factorial(a)
    series = 0.0 * x
    for k in range(25):
        series = series + term
        term = term * x / (a + k + 1)
    series = xp.exp(-x) * series
    head = sum(x**j / math.factorial(j) for j in range(a))
    direct = 1.0 - xp.exp(-x) * head
    return xp.where(x < 1.0, series, direct)


def _flow(nilpotent: np.ndarray, t):
    """(exp(t beta A), Q(t)) for A = -kappa I + nilpotent and noise diag(0, 2 Gamma beta).

    Works on a float (numpy, float64) or a JAX scalar; returns two (2, 2) arrays.
    """
    xp = array_module(t)
    bt = BETA * t
    nil = xp.asarray(nilpotent)
    eye = xp.eye(2)
    expm = xp.exp(-_KAPPA * bt) * (eye + bt * nil)
    # Q = q int_0^t e^{-2 kappa beta s} (e_v + beta s n)(e_v + beta s n)^T ds, n = N e_v
    rate = 2.0 * _KAPPA * BETA
    x = rate * t
    i0 = _gamma_p(1, x, xp) / rate
    i1 = _gamma_p(2, x, xp) / rate**2
    i2 = 2.0 * _gamma_p(3, x, xp) / rate**3
    e_v = xp.asarray([0.0, 1.0])
    n = nil[:, 1]
    q = 2.0 * GAMMA * BETA
    cov = q * (i0 * xp.outer(e_v, e_v) + BETA * i1 * (xp.outer(e_v, n) + xp.outer(n, e_v))
               + BETA**2 * i2 * xp.outer(n, n))
    return expm, cov


def forward_flow(t):
    """The forward CLD transition over time t, per coordinate: u_t = E u_0 + N(0, Q).

    Returns ``(E, Q)``, both (2, 2), ordered (x, v). float inputs give float64 numpy arrays.
    """
    return _flow(_N_FORWARD, t)


def reverse_linear_flow(h):
    """The exact transition over h of the linear part of the generative SDE (used by SSCS).

    dx = -beta M^-1 v dt, dv = beta (x - Gamma M^-1 v) dt + sqrt(2 Gamma beta) dB; its stationary
    law is also N(0, 1) x N(0, M). Returns ``(E, Q)`` as :func:`forward_flow`.
    """
    return _flow(_N_REVERSE, h)
