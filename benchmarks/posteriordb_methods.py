"""Every sampler on every posteriordb posterior: posteriordb's pass rule, ESS and what it cost.

The runner is :mod:`scoresample.bench` (also behind ``scoresample bench``); this script is its
command line, writing the published tables:

    python benchmarks/posteriordb_methods.py --methods nuts,fors,rtk --preconditioners dense
    python benchmarks/posteriordb_methods.py --methods nuts,picard,mala,ula --preconditioners dense
    python benchmarks/posteriordb_methods.py --render-only

writes docs/benchmarks/posteriordb_methods.md (pass table) and docs/benchmarks/ess.md (cost table).
Run ``python benchmarks/posteriordb_methods.py --help`` for every option.
"""

from scoresample.bench import main

if __name__ == "__main__":
    main()
