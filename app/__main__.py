"""``python -m app`` runs MoE Chat."""

import sys

from app.main import main

sys.exit(main())
