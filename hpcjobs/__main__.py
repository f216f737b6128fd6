import sys

from hpcjobs.cli import main

sys.exit(main())
