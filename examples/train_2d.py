"""Train a score network on a 2-D toy set, sample it with every diffusion sampler, save a picture.

    python examples/train_2d.py --dataset two-moons --steps 6000 --out outputs/two-moons

Trains an eps network (and an energy network, which RTK-MALA uses for its Metropolis correction),
then draws samples with each method of ``scoresample.diffusion.METHODS`` that this installation has
(ddpm, dpm-solver++, rtk-uld, rtk-mala, fors, picard-sde) at the same budget of score evaluations,
and saves a scatter plot per method beside the held-out data. Checkpoints and models go under
``--out`` (outputs/ is gitignored); ``--resume`` continues a stopped training run.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from scoresample import datasets, diffusion, metrics, train

# method -> (which network, options at a budget of about `nfe` score evaluations per sample)
SAMPLERS = {
    "ddpm": ("eps", lambda nfe: dict(nfe=nfe)),
    "dpm-solver++": ("eps", lambda nfe: dict(nfe=nfe)),
    "rtk-uld": ("eps", lambda nfe: dict(nfe=nfe)),
    "rtk-mala": ("energy", lambda nfe: dict(nfe=nfe)),
    "fors": ("eps", lambda nfe: dict(delta=0.1, constant=0.1)),
    "picard-sde": ("eps", lambda nfe: dict(num_steps=nfe, num_blocks=5, tol=1e-3)),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="two-moons", choices=datasets.NAMES_2D)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--nfe", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="default outputs/<dataset>")
    parser.add_argument("--picture", default=None, help="default <out>/samples.png")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out or os.path.join("outputs", args.dataset))
    os.makedirs(out, exist_ok=True)

    k_data, k_train, k_sample = jax.random.split(jax.random.key(args.seed), 3)
    data, held_out = datasets.train_test_split(args.dataset, k_data, num_test=args.num_samples)
    nets = {}
    for param in sorted({network for network, _ in SAMPLERS.values()}):
        print(f"training the {param} network on {args.dataset} ({args.steps} steps)")
        nets[param] = train.fit_score(
            jax.random.fold_in(k_train, ord(param[0])), data, parameterization=param,
            num_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
            checkpoint_dir=os.path.join(out, f"checkpoints-{param}"), resume=args.resume)
        nets[param].save(os.path.join(out, f"model-{param}"), overwrite=True)

    second_moment = float(np.mean(np.sum(np.square(np.asarray(data)), axis=1)))
    results = {}
    for method, (param, options) in SAMPLERS.items():
        net = nets[param]
        options = options(args.nfe)
        if method == "fors":
            options["second_moment"] = second_moment
        start = time.perf_counter()
        res = diffusion.sample(k_sample, method, net.score_fn, dim=2, num_samples=args.num_samples,
                               energy_fn=net.energy_fn if param == "energy" else None, **options)
        samples = np.asarray(res.samples)[~np.asarray(res.is_divergent)]
        ed = metrics.energy_distance(samples, np.asarray(held_out))
        results[method] = samples
        print(f"{method:14s} nfe {res.nfe:8.1f}  rounds {res.rounds:6d}  energy distance {ed:.4f}  "
              f"({time.perf_counter() - start:.1f} s, {int(np.sum(res.is_divergent))} divergent)")
    floor = metrics.energy_distance(np.asarray(datasets.make(args.dataset, jax.random.key(999),
                                                             args.num_samples)),
                                    np.asarray(held_out))
    print(f"{'data vs data':14s} energy distance {floor:.4f} (the floor at this sample size)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("held-out data", np.asarray(held_out))] + list(results.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.4))
    for ax, (name, pts) in zip(np.atleast_1d(axes), panels):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_title(name, fontsize=8)
        ax.set_xlim(-4.5, 4.5)
        ax.set_ylim(-4.5, 4.5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    picture = args.picture or os.path.join(out, "samples.png")
    fig.savefig(picture, dpi=80)
    print(f"saved {picture}")


if __name__ == "__main__":
    main()
