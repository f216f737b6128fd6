"""Moved: a run directory's files are ``hpcjobs.sweepdir.runfiles`` (the launcher reads them too).

``hpcjobs.run.runfiles`` is that module under its old name, deprecated: importing it warns, and
gives the same module object.
"""

import sys

from hpcjobs.deprecation import moved
from hpcjobs.sweepdir import runfiles

moved(__name__, runfiles.__name__)
sys.modules[__name__] = runfiles
