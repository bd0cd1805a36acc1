import sys

from qpeft.tables.cli import main

sys.exit(main())
