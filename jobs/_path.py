"""Imported first by every job shim. `python jobs/sfbd.py` puts jobs/ first on sys.path, where
`sfbd.py` would shadow the `sfbd` package; this puts the project root there instead (under
`ray job submit --working-dir .` that is the uploaded copy). The only sys.path change in the
project."""

import os
import sys

_jobs = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_jobs)] + [
    p for p in sys.path if os.path.abspath(p or os.curdir) != _jobs
]
