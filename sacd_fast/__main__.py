import sys

from sacd_fast.cli import main

sys.exit(main())
