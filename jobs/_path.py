"""Imported first by every job script: `jobs/sfbd.py` shares the package's name, so the jobs
folder must not shadow the `sfbd` package. Puts the project root first instead (under
`ray job submit --working-dir .` that is the uploaded copy)."""

import os
import sys

_jobs = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_jobs)] + [
    p for p in sys.path if os.path.abspath(p or os.curdir) != _jobs
]
