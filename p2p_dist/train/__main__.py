"""`python -m p2p_dist.train` (what `accelerate launch -m p2p_dist.train` runs)."""

import sys

from p2p_dist.train.cli import main

sys.exit(main())
