"""`sfbd prepare` as a script, for `ray job submit ... -- python jobs/prepare_data.py`:
a clean/noisy split, once. Options: `python jobs/prepare_data.py --help`."""

import sys

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)

from sfbd.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
