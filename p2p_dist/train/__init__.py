"""Training: config -> engine (Accelerate/DeepSpeed) -> the pix2pix step -> checkpoints."""
