"""p2p_eval: the paper's evaluation (FCN-score, per-pixel metrics) and perceptual metrics."""

from p2p_eval.confusion import confusion_matrix, scores_from_confusion

__all__ = ["confusion_matrix", "scores_from_confusion"]
