"""`ray job submit --working-dir . -- python tuning/sweep.py ...`: the same as `sfbd sweep ...`
(Ray Tune over any config keys: --grid, --range, --seeds; docs/sweeps.md). Ray puts the
working directory on PYTHONPATH; locally `make` installs the package. `python tuning/sweep.py
--help` lists the options."""

import sys

from sfbd.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
