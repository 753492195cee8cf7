"""Rebuild the posteriordb subset shipped in ``scoresample/posteriordb/data`` from a full checkout.

    .venv/bin/python scripts/build_posteriordb_data.py PATH/TO/posteriordb          # write
    .venv/bin/python scripts/build_posteriordb_data.py PATH/TO/posteriordb --check  # compare

``PATH/TO/posteriordb`` is a posteriordb folder in posteriordb's own layout (``posteriors/``,
``data/data/``, ``reference_posteriors/draws/``). Every posterior there whose model has a
log-density in :mod:`scoresample.posteriordb.models` is shipped as

- ``data/DATA.json.gz``: the data dict, as posteriordb has it;
- ``posteriors/NAME.json.gz``: ``{"info", "reference", "reference_info"}``, where ``reference`` is
  :func:`scoresample.posteriordb.checks.summarize` of the reference draws (mean, sd, MCSE of both,
  quantiles, a few draws) and ``reference_info`` posteriordb's record of how they were made
  (without its session dump);

beside posteriordb's licence (``LICENCE.md``, BSD-3) and a ``README.md`` listing what is shipped.
Gzip headers carry no time stamp, so a rebuild from the same checkout is byte-identical.

``--check`` loads every shipped posterior and compares, for several draw sets per posterior (one half
of the reference chains as is, shifted by 3 and 6 combined MCSEs, scaled by 0.92 and 1.12), the pass
rule's verdicts and z-scores against the shipped summary with those against all the full draws. It
writes nothing and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoresample.posteriordb import checks, loader  # noqa: E402
from scoresample.posteriordb.models import MODELS  # noqa: E402

LICENCE_NAMES = ("LICENCE.md", "LICENSE.md", "LICENSE", "LICENCE")


def read_zipped_json(path: Path):
    """The one JSON file inside the zip archive ``path``."""
    with zipfile.ZipFile(path) as archive:
        (member,) = [m for m in archive.namelist() if m.endswith(".json")]
        return json.loads(archive.read(member))


def write_gz_json(path: Path, obj) -> int:
    """Write ``obj`` as gzip-compressed JSON with a zero time stamp; return the bytes written."""
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as fh:
        fh.write(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def build(source: Path, out: Path) -> None:
    names = loader.list_posteriors(source)
    licence = next((source / n for n in LICENCE_NAMES if (source / n).is_file()), None)
    if licence is None:
        raise SystemExit(f"{source} has no licence file ({', '.join(LICENCE_NAMES)})")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copyfile(licence, out / "LICENCE.md")
    rows, total = [], 0
    for name in names:
        post = loader.load(name, root=source)
        info = dict(post.info)
        data_name = info["data_name"]
        raw_data = read_zipped_json(source / "data" / "data" / f"{data_name}.json.zip")
        total += write_gz_json(out / "data" / f"{data_name}.json.gz", raw_data)
        ref_info = {k: v for k, v in post.reference_info.items() if k != "versions"}
        summary = post.reference
        total += write_gz_json(out / "posteriors" / f"{name}.json.gz",
                               {"info": info, "reference": summary.to_json(),
                                "reference_info": ref_info})
        rows.append(f"| {name} | {post.dim} | {summary.num_params} | "
                    f"{summary.num_chains} x {summary.num_draws} |")
        print(f"{name}: dim {post.dim}, {summary.num_params} parameters")
    readme = [
        "# posteriordb subset shipped with scoresample",
        "",
        "Copied from posteriordb (stan-dev/posteriordb; licence in LICENCE.md beside this file) by",
        "`scripts/build_posteriordb_data.py`: each model's data (`data/DATA.json.gz`, the data as",
        "posteriordb has it) and, for each posterior, `posteriors/NAME.json.gz` with posteriordb's",
        "description (`info`), a summary of its reference draws (`reference`: per parameter the",
        "mean, sd, their Monte Carlo standard errors, quantiles and a few draws) and how the draws",
        "were made (`reference_info`). The full draws are not shipped; `scoresample.posteriordb.load`",
        "reads them from a full posteriordb checkout given as `root=` or `SCORESAMPLE_POSTERIORDB`.",
        "",
        "| posterior | unconstrained dim | parameters | reference chains x draws |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    (out / "README.md").write_text("\n".join(readme), encoding="utf-8")
    print(f"wrote {len(names)} posteriors to {out}: {total / 1024:.0f} KiB of compressed JSON")


def _verdicts(draws, reference) -> tuple:
    res = checks.pass_rule(draws, reference)
    return res.passed, res.z, res.sd_ratio


def check(source: Path) -> int:
    bad = 0
    for name in loader.list_posteriors(None):
        shipped = loader.load(name)
        full = loader.load(name, root=source)
        draws = full.reference_draws
        half, other = draws[: len(draws) // 2], draws[len(draws) // 2:]
        # the shipped summary is the summary of all the chains, bit for bit
        computed = checks.summarize(draws, param_names=full.param_names)
        same = all(np.array_equal(getattr(shipped.reference, f), getattr(computed, f))
                   for f in ("mean", "sd", "mcse_mean", "mcse_sd", "quantiles", "points"))
        base = checks.pass_rule(half, other)
        step = np.hypot(base.mcse, base.ref_mcse)
        centre = half.mean(axis=(0, 1))
        cases = {"half": half, "shift 3 se": half + 3 * step, "shift 6 se": half + 6 * step,
                 "scale 0.92": centre + 0.92 * (half - centre),
                 "scale 1.12": centre + 1.12 * (half - centre)}
        line = []
        for label, x in cases.items():
            p_sum, z_sum, r_sum = _verdicts(x, shipped.reference)
            p_all, z_all, r_all = _verdicts(x, draws)
            agree = p_sum == p_all and np.array_equal(z_sum, z_all) and np.array_equal(r_sum, r_all)
            same &= agree
            line.append(f"{label}: {'pass' if p_sum else 'fail'}"
                        f"{'' if agree else ' (DIFFERS from the full draws)'}")
        print(f"{name}: " + "; ".join(line))
        bad += not same
    print("every verdict and z-score agrees" if not bad else f"{bad} posteriors differ")
    return int(bad > 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a full posteriordb checkout")
    parser.add_argument("--out", type=Path, default=loader.PACKAGE_DATA,
                        help="where to write (default: the package's data folder)")
    parser.add_argument("--check", action="store_true",
                        help="compare the shipped summaries with the full draws; write nothing")
    args = parser.parse_args(argv)
    source = loader.find_root(args.source)
    if args.check:
        return check(source)
    unknown = [p for p in (source / "posteriors").glob("*.json")
               if json.loads(p.read_text()).get("model_name") not in MODELS]
    if unknown:
        print(f"not shipped (no log-density here): {len(unknown)} posteriors")
    build(source, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
