"""``python -m DiffusionAnomalyLib`` runs the command line."""

import sys

from DiffusionAnomalyLib.app.cli import main

sys.exit(main())
