"""What the dense preconditioner costs per gradient, against the diagonal one (issue 15, item 3).

    python benchmarks/preconditioner_cost.py            # about 2 min

The staged warmup runs every kernel on z with x = m + D z: per gradient, the dense map adds
x = m + L z and L^T grad (O(d^2)) where the diagonal one adds O(d). This times the gradient of
the preconditioned log-density, vmapped over 4 chains and jitted, for a logistic regression with
1000 observations (gradient O(n d)) and for an almost free log-density (an iid Gaussian, the worst
case for the dense map), at d = 10 to 400; the best of 5 repeats of 200 calls.
``scoresample.bayes.api.DENSE_MAX_DIM`` is chosen from it.
"""

import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from scoresample.adaptation import preconditioned_logdensity  # noqa: E402


def seconds_per_call(fn, *args, repeats=200):
    jax.block_until_ready(fn(*args))
    best = []
    for _ in range(5):
        tic = time.perf_counter()
        for _ in range(repeats):
            out = fn(*args)
        jax.block_until_ready(out)
        best.append((time.perf_counter() - tic) / repeats)
    return min(best)


def models(design, labels):
    def logistic(beta):
        eta = design @ beta
        return jnp.sum(labels * eta - jax.nn.softplus(eta)) - 0.5 * beta @ beta

    def gaussian(beta):
        return -0.5 * beta @ beta

    return {"logistic regression, n = 1000": logistic, "iid Gaussian": gaussian}


def main(num_obs=1000):
    rng = np.random.default_rng(0)
    print("| d | model | dense (us) | diagonal (us) | dense / diagonal |")
    print("|---|---|---|---|---|")
    for dim in (10, 30, 100, 200, 400):
        design = jnp.asarray(rng.normal(size=(num_obs, dim)) / np.sqrt(dim))
        labels = jnp.asarray(rng.integers(0, 2, num_obs).astype(float))
        cov = np.cov(rng.normal(size=(2 * dim, dim)).T) + np.eye(dim)
        chol = jnp.asarray(np.linalg.cholesky(cov))
        diag = jnp.sqrt(jnp.diagonal(chol @ chol.T))
        shift = jnp.zeros(dim)
        z = jnp.asarray(rng.normal(size=(4, dim)))
        for name, logdensity_fn in models(design, labels).items():
            dense = jax.jit(jax.vmap(jax.grad(preconditioned_logdensity(logdensity_fn, shift,
                                                                        chol))))
            diagonal = jax.jit(jax.vmap(jax.grad(preconditioned_logdensity(logdensity_fn, shift,
                                                                           diag))))
            t_dense, t_diag = seconds_per_call(dense, z), seconds_per_call(diagonal, z)
            print(f"| {dim} | {name} | {t_dense * 1e6:.1f} | {t_diag * 1e6:.1f} | "
                  f"{t_dense / t_diag:.2f} |", flush=True)


if __name__ == "__main__":
    main()
