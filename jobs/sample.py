"""`sfbd sample` as a script, for `ray job submit ... -- python jobs/sample.py`:
samples from a checkpoint. Options: `python jobs/sample.py --help`."""

import sys

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)

from sfbd.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
