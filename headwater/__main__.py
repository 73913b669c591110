"""``python -m headwater`` runs the CLI (also under ``torchrun``)."""
import sys

from headwater.cli import main

sys.exit(main())
