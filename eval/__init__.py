"""p2p_eval: the paper's evaluation (FCN-score, per-pixel metrics) and perceptual metrics."""
