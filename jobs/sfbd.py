"""`sfbd run` as a script, for `ray job submit ... -- python jobs/sfbd.py`:
SFBD end to end on a config, resumable. Options: `python jobs/sfbd.py --help`."""

import sys

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)

from sfbd.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
