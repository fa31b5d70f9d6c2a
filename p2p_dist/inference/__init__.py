"""Applying generators at test time: `translate_batch` (the one forward pass used by
p2p-translate, p2p-eval score and the training's sample grids), tiling of any image size, exports
to ONNX / TorchScript / torch.export and the console commands p2p-translate and p2p-export."""

from p2p_dist.inference.forward import INFERENCE_MODES, PRECISIONS, sample_seed, translate_batch

__all__ = ["INFERENCE_MODES", "PRECISIONS", "sample_seed", "translate_batch"]
