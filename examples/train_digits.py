"""Train the small conv score network on scikit-learn's 8x8 digits, sample it, check for copies.

    python examples/train_digits.py --steps 4000 --out outputs/digits

Trains :class:`scoresample.nn.ConvNet` (eps parameterisation) on 1,597 of the 1,797 digits (200 held
out), samples with DDPM and DPM-Solver++ (and any other sampler of the table that exists), saves a
grid of samples, and runs a nearest-neighbour check: for each generated image, the distance to the
closest training image, compared with the same distance for the held-out images (new handwriting
of the same digits). Copies of training images would sit near distance 0.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from scoresample import datasets, diffusion, train


def nearest_distances(points, reference, block: int = 256):
    """Euclidean distance from each row of ``points`` to its nearest row of ``reference``, and its index."""
    points = np.asarray(points, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    ref_sq = np.sum(reference**2, axis=1)
    dist, idx = [], []
    for i in range(0, points.shape[0], block):
        p = points[i:i + block]
        d2 = np.sum(p**2, axis=1)[:, None] + ref_sq[None, :] - 2.0 * p @ reference.T
        j = np.argmin(d2, axis=1)
        dist.append(np.sqrt(np.maximum(d2[np.arange(p.shape[0]), j], 0.0)))
        idx.append(j)
    return np.concatenate(dist), np.concatenate(idx)


def copy_check(samples, train_x, test_x) -> dict:
    """Nearest-training-image distances of samples against those of held-out images."""
    d_gen, idx = nearest_distances(samples, train_x)
    d_test, _ = nearest_distances(test_x, train_x)
    threshold = float(np.quantile(d_test, 0.01))
    return dict(median_sample=float(np.median(d_gen)), median_held_out=float(np.median(d_test)),
                min_sample=float(d_gen.min()), q01_held_out=threshold,
                fraction_below_q01=float(np.mean(d_gen < threshold)), nearest_index=idx,
                distances=d_gen)


def save_grid(path, images, nearest=None, nrow=8):
    """Save images (n, 64) in [-1, 1] as a grid; with ``nearest``, each sample beside its neighbour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.clip(np.asarray(images), -1.0, 1.0)
    pairs = nearest is not None
    ncol = nrow * (2 if pairs else 1)
    n = min(images.shape[0], nrow * nrow)
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 0.42, nrow * 0.42))
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        i = k // 2 if pairs else k
        if i >= n:
            continue
        img = nearest[i] if pairs and k % 2 else images[i]
        ax.imshow(img.reshape(8, 8), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.subplots_adjust(0, 0, 1, 1, 0.05, 0.05)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--nfe", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/digits")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    k_data, k_model, k_train, k_sample = jax.random.split(jax.random.key(args.seed), 4)
    train_x, test_x = datasets.train_test_split("digits", k_data, num_test=200)
    model = train.default_model("digits", "eps", train_x, k_model)
    net = train.fit_score(k_train, train_x, model=model, num_steps=args.steps,
                          batch_size=args.batch_size, learning_rate=args.learning_rate,
                          checkpoint_dir=os.path.join(out, "checkpoints"), resume=args.resume)
    net.save(os.path.join(out, "model"), overwrite=True)

    for method in ("ddpm", "dpm-solver++"):
        start = time.perf_counter()
        res = diffusion.sample(k_sample, method, net.score_fn, dim=64,
                               num_samples=args.num_samples, nfe=args.nfe, denoise=True)
        samples = np.asarray(res.samples)
        check = copy_check(samples, train_x, test_x)
        print(f"{method}: {res.nfe:.0f} evaluations per sample, {time.perf_counter() - start:.1f} s; "
              f"nearest training image at median distance {check['median_sample']:.2f} "
              f"(held-out images: {check['median_held_out']:.2f}); closest sample "
              f"{check['min_sample']:.2f}; {100 * check['fraction_below_q01']:.1f}% of samples are "
              f"closer than the 1% quantile of held-out images ({check['q01_held_out']:.2f})")
        save_grid(os.path.join(out, f"samples-{method}.png"), samples)
        save_grid(os.path.join(out, f"nearest-{method}.png"), samples[:32],
                  nearest=np.asarray(train_x)[check["nearest_index"][:32]], nrow=4)
    print(f"pictures in {out}")


if __name__ == "__main__":
    main()
