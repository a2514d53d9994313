"""`sfbd benchmark` as a script, for `ray job submit ... -- python jobs/benchmark.py`:
Ray stages against plain PyTorch loops. Options: `python jobs/benchmark.py --help`."""

import sys

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)

from sfbd.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
