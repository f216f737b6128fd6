"""Moved: a worker pool's files are ``hpcjobs.sweepdir.pools`` (the launching stage reads them too).

``hpcjobs.run.pool`` is that module under its old name, deprecated: importing it warns, and
gives the same module object.
"""

import sys

from hpcjobs.deprecation import moved
from hpcjobs.sweepdir import pools

moved(__name__, pools.__name__)
sys.modules[__name__] = pools
