"""The networks of pix2pix (Isola et al. 2017): generators, discriminators, our checkpoint
format and loading of the reference implementation's checkpoints."""

from p2p_dist.models.convert import (
    ConversionReport,
    from_reference_state_dict,
    load_reference_generator,
    reference_key_map,
    to_reference_state_dict,
)
from p2p_dist.models.discriminator import DISCRIMINATORS, build_discriminator, receptive_field
from p2p_dist.models.generator_file import (
    INFERENCE_MODES,
    load_generator,
    resolve_checkpoint,
    save_generator,
    set_inference_mode,
)
from p2p_dist.models.generator import GENERATORS, build_generator, native_size, size_multiple
from p2p_dist.models.layers import NORMS, count_parameters, init_weights
from p2p_dist.models.spec import GeneratorSpec

__all__ = [
    "ConversionReport", "DISCRIMINATORS", "GENERATORS", "GeneratorSpec", "INFERENCE_MODES", "NORMS",
    "build_discriminator", "build_generator", "count_parameters", "from_reference_state_dict", "init_weights",
    "load_generator", "load_reference_generator", "native_size", "receptive_field", "reference_key_map",
    "resolve_checkpoint", "save_generator", "set_inference_mode", "size_multiple", "to_reference_state_dict",
]
