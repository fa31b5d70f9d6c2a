"""data.decode: where a streamed batch's JPEG members are decoded, and decoding them there.

With `gpu`, the readers leave each RGB JPEG member encoded (`decode.Jpeg`, its shape from its header)
and ship an `Encoded` batch; the training process decodes all of a batch's JPEGs in one call of
torchvision's `decode_jpeg(list, device="cuda")` (nvJPEG), straight into the batch's device buffer.
torchvision, rather than nvImageCodec, because it is the companion package of torch that GPU machines
already have, its CUDA decode takes a whole batch and is documented thread-safe; nvImageCodec would be
one more dependency for the same nvJPEG. PNG members (lossless) are decoded by the readers as
always. nvJPEG's pixels differ slightly from libjpeg-turbo's (the CPU path), so a run is bit-exact
across machines only with the same decoder; the draws never depend on the decoder.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch

from p2p_dist.data.decode import Jpeg, decode_image
from p2p_dist.data.errors import DataError
from p2p_dist.data.jitter import Jitter, Pixels
from p2p_dist.data.shards import SampleError

log = logging.getLogger("p2p_dist.data")


@functools.cache
def gpu_decode_unavailable() -> str | None:
    """None when this process can decode JPEG on its CUDA device, else what is missing. torchvision is
    imported here only (it does not import beside every torch build), and one tiny JPEG is decoded to
    prove the library works."""
    if not torch.cuda.is_available():
        return "a CUDA device (none is visible)"
    try:
        import simplejpeg
        from torchvision.io import ImageReadMode, decode_jpeg

        probe = simplejpeg.encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
        decode_jpeg([torch.frombuffer(bytearray(probe), dtype=torch.uint8)], mode=ImageReadMode.RGB, device="cuda")
    except Exception as exc:  # an ImportError, or a torchvision built without nvJPEG
        return (
            f"torchvision's decode_jpeg on CUDA ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        )
    return None


@functools.cache
def decode_on_device(request: str) -> bool:
    """data.decode -> whether the readers ship JPEG members encoded for the device to decode. `auto`:
    on the GPU when it can be, else on the CPU (said in one line, once, when a GPU is there); `gpu`
    where it cannot be is refused in one line naming the key."""
    if request == "cpu":
        return False
    missing = gpu_decode_unavailable()
    if missing is None:
        return True
    if request == "gpu":
        raise DataError(f"data.decode=gpu needs {missing}; use data.decode=auto or data.decode=cpu")
    if torch.cuda.is_available():
        log.warning("data.decode=auto: JPEG is decoded on the CPU (decoding on the GPU needs %s)", missing)
    return False


@dataclass
class Encoded:
    """A `Pixels` batch whose JPEG images are still encoded: `parts` holds each image, in `Pixels`
    order, as a `Jpeg` or a decoded uint8 array (PNG members, and JPEGs the reader decoded itself)."""

    parts: list
    fields: tuple[str, ...]
    shapes: list[tuple[int, ...]]
    draws: np.ndarray
    jitter: Jitter
    key: list[str]

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes)

    def decode(self, device: torch.device, out: torch.Tensor | None = None) -> Pixels:
        """The `Pixels` batch, its bytes in `out` (on `device`, at least `nbytes` long; default: a new
        tensor). JPEGs on a CUDA device: nvJPEG, one call for the batch; elsewhere decode.decode_image,
        exactly as the readers decode them (the same pixels, bit for bit)."""
        device = torch.device(device)
        data = torch.empty(self.nbytes, dtype=torch.uint8, device=device) if out is None else out[: self.nbytes]
        jpegs = [i for i, p in enumerate(self.parts) if isinstance(p, Jpeg)]
        decoded = dict(zip(jpegs, self._decode_jpegs(jpegs, device)))
        at = 0
        for i, (part, shape) in enumerate(zip(self.parts, self.shapes)):
            image = decoded[i] if i in decoded else torch.from_numpy(np.ascontiguousarray(part))
            n = int(np.prod(shape))
            data[at : at + n].view(shape).copy_(image, non_blocking=True)
            at += n
        return Pixels(
            data=data, fields=self.fields, shapes=self.shapes, draws=self.draws, jitter=self.jitter, key=self.key
        )

    def _decode_jpegs(self, indices: list[int], device: torch.device) -> list[torch.Tensor]:
        """The JPEGs at these places of `parts`, each as an H x W x 3 uint8 tensor (on `device` when it
        is a CUDA device)."""
        jpegs = [self.parts[i] for i in indices]
        if device.type == "cuda" and jpegs:
            from torchvision.io import ImageReadMode, decode_jpeg

            try:
                chw = decode_jpeg(
                    [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs],
                    mode=ImageReadMode.RGB,
                    device=device,
                )
                if all(x.shape[1:] == j.shape[:2] for x, j in zip(chw, jpegs)):
                    return [x.permute(1, 2, 0) for x in chw]
            except RuntimeError as exc:
                log.warning("nvJPEG refused a batch (%s); decoding it on the CPU", str(exc).splitlines()[0])
        out = []
        for i, j in zip(indices, jpegs):
            try:
                out.append(torch.from_numpy(decode_image(j.data, "RGB")))
            except SampleError as exc:
                raise DataError(
                    f"sample {self.key[i % len(self.key)]}: its JPEG header reads but its data does not "
                    f"({exc}); data.decode=cpu skips and counts such samples"
                ) from None
        return out
