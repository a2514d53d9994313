"""`sfbd train-classifier` as a script, for `ray job submit ... -- python jobs/train_classifier.py`:
the feature network of the fd metric. Options: `python jobs/train_classifier.py --help`."""

import sys

import _path  # noqa: F401  (keeps jobs/ from shadowing the sfbd package)

from sfbd.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-classifier", *sys.argv[1:]]))
