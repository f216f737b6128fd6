"""Moved: a worker pool's files are ``hpcjobs.sweepdir.pools`` (the launching stage reads them too).

``hpcjobs.run.pool`` is that module under its old name: importing either gives the same module.
"""

import sys

from hpcjobs.sweepdir import pools

sys.modules[__name__] = pools
