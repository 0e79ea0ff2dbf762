"""``python -m gradcheckup ...`` runs the command line."""

import sys

from gradcheckup.cli import main

sys.exit(main())
