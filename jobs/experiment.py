"""`sfbd experiment` as a script, for `ray job submit ... -- python jobs/experiment.py`:
SFBD against its baselines per clean fraction. Options: `python jobs/experiment.py --help`."""

import sys

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)

from sfbd.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
