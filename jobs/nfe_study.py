"""`sfbd nfe-study` as a script, for `ray job submit ... -- python jobs/nfe_study.py`:
distance against backward levels, ODE and SDE. Options: `python jobs/nfe_study.py --help`."""

import sys

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)

from sfbd.cli import main

if __name__ == "__main__":
    sys.exit(main(["nfe-study", *sys.argv[1:]]))
