"""`python -m p2p_eval ...` (used by `accelerate launch -m p2p_eval score ...`)."""

import sys

from p2p_eval.cli import main

sys.exit(main())
