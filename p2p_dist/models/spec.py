"""GeneratorSpec: everything needed to rebuild a trained generator, stored as generator.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from p2p_dist.data.transforms import PixelRange
from p2p_dist.errors import UserError
from p2p_dist.models.registry import DIRECTIONS, GENERATORS, NORMS, TASKS

SPEC_FORMAT = 1


@dataclass(frozen=True)
class GeneratorSpec:
    """Architecture of a saved generator. `task`, `direction` and `image_size` are optional
    facts about the training data (None when unknown) that `p2p-translate` uses as defaults;
    `input_range` and `output_range` how the input's and the output's stored pixels map to [-1, 1]
    (None: 8-bit, x / 127.5 - 1, as every generator before 16-bit and multichannel data)."""

    name: str
    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    norm: str = "batch"
    dropout: bool = True
    task: str | None = None
    direction: str | None = None
    image_size: int | None = None
    input_range: PixelRange | None = None
    output_range: PixelRange | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.name not in GENERATORS:
            problems.append(f"name {self.name!r} is not one of {', '.join(GENERATORS)}")
        for f in ("in_channels", "out_channels", "ngf"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{f} must be a positive integer, got {v!r}")
        if self.norm not in NORMS:
            problems.append(f"norm {self.norm!r} is not one of {', '.join(NORMS)}")
        if not isinstance(self.dropout, bool):
            problems.append(f"dropout must be true or false, got {self.dropout!r}")
        if self.task is not None and self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            problems.append(f"direction {self.direction!r} is not one of {', '.join(DIRECTIONS)}")
        if self.image_size is not None and (
            isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1
        ):
            problems.append(f"image_size must be a positive integer, got {self.image_size!r}")
        for f, channels in (("input_range", self.in_channels), ("output_range", self.out_channels)):
            rng = getattr(self, f)
            if rng is not None and rng.channels != channels:
                problems.append(f"{f} has {rng.channels} channels, the generator {channels}")
        if problems:
            raise UserError("invalid generator spec: " + "; ".join(problems))

    @property
    def is_colorization(self) -> bool:
        return self.task == "colorization" or (self.in_channels, self.out_channels) == (1, 2)

    def build(self, init_gain: float = 0.02):
        from p2p_dist.models.generator import build_generator

        return build_generator(
            self.name, self.in_channels, self.out_channels, self.ngf, self.norm, self.dropout, init_gain=init_gain
        )

    def to_dict(self) -> dict[str, Any]:
        d = {"format": SPEC_FORMAT, **dataclasses.asdict(self)}
        for f in ("input_range", "output_range"):  # as JSON holds it (lists), what a saved spec compares with
            d[f] = None if getattr(self, f) is None else getattr(self, f).to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> GeneratorSpec:
        """Parse a generator.json object; unknown keys are ignored, a missing `name` or a
        format other than 1 is an error."""
        if not isinstance(d, dict):
            raise UserError("invalid generator spec: expected a JSON object")
        fmt = d.get("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise UserError(f"generator spec format {fmt!r} is not supported (this version reads format {SPEC_FORMAT})")
        if "name" not in d:
            raise UserError("invalid generator spec: no 'name'")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in fields}
        for f in ("input_range", "output_range"):
            if values.get(f) is not None:
                values[f] = PixelRange.from_dict(values[f])
        return cls(**values)
