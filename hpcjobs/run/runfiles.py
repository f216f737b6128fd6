"""Moved: a run directory's files are ``hpcjobs.sweepdir.runfiles`` (the launcher reads them too).

``hpcjobs.run.runfiles`` is that module under its old name: importing either gives the same module.
"""

import sys

from hpcjobs.sweepdir import runfiles

sys.modules[__name__] = runfiles
