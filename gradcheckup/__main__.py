"""``python -m gradcheckup ...`` runs the command line."""

from __future__ import annotations

import sys

from gradcheckup.cli import main

sys.exit(main())
