"""Pretrained backbone weights from the local torch cache (`$TORCH_HOME/hub/checkpoints/`), with a
clear message when absent; `p2p-eval weights fetch` downloads them on request only (eval/README.md,
"Pretrained weights")."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from p2p_dist.errors import UserError


class MetricUnavailable(Exception):
    """A metric cannot run here (missing weights, images too small): reported, never fatal."""


def checkpoints_dir() -> Path:
    """`$TORCH_HOME/hub/checkpoints` (torch.hub's cache folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weight_file(patterns: list[str], what: str, source: str) -> Path:
    """The first file in the cache matching one of `patterns`; MetricUnavailable naming the
    expected file, the folder and where it comes from otherwise."""
    folder = checkpoints_dir()
    for pattern in patterns:
        hits = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if hits:
            return hits[0]
    raise MetricUnavailable(
        f"{what} weights not found: put {patterns[0]} ({source}) into {folder} "
        f"(`p2p-eval weights fetch` downloads it; set TORCH_HOME to use another cache)"
    )


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt (torch.load, weights only) or .safetensors file."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: the metric is unavailable, say why
        raise MetricUnavailable(f"{what} weights {path} could not be read ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MetricUnavailable(f"{what} weights {path} do not hold a state dict")
    return state


def load_checked(
    module: torch.nn.Module,
    state: dict,
    path: Path,
    what: str,
    optional_suffixes: tuple[str, ...] = ("num_batches_tracked",),
    prefix: str = "",
) -> None:
    """Load `state` (keys optionally under `prefix`) into `module` after an explicit key check.

    Every parameter/buffer of `module` must be present with the right shape (keys ending in one
    of `optional_suffixes` may be absent); extra keys in the file (classifier heads, auxiliary
    logits) are ignored. Problems raise MetricUnavailable naming the first offending keys.
    """
    expected = module.state_dict()
    picked: dict[str, torch.Tensor] = {}
    missing, wrong = [], []
    for key, ref in expected.items():
        src = state.get(prefix + key)
        if src is None:
            if not key.endswith(optional_suffixes):
                missing.append(prefix + key)
            continue
        if tuple(src.shape) != tuple(ref.shape):
            wrong.append(f"{prefix + key} {tuple(src.shape)} (expected {tuple(ref.shape)})")
            continue
        picked[key] = src.to(ref.dtype)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MetricUnavailable(f"{what} weights {path} lack key(s) {', '.join(missing[:3])}{more}")
    if wrong:
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise MetricUnavailable(f"{what} weights {path} have wrong shapes: {'; '.join(wrong[:3])}{more}")
    module.load_state_dict(picked, strict=False)


def describe_cache() -> str:
    """One line for --help texts and reports."""
    env = os.environ.get("TORCH_HOME")
    return f"{checkpoints_dir()}" + ("" if env else " (TORCH_HOME unset: the default cache)")


# --- the files, where they come from, and fetching them on request (`p2p-eval weights`) ----------


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: where it lives under `checkpoints_dir()`, where it is published, and
    its sha256 and size (the first 8 hex digits of the sha256 are part of torchvision's and
    pytorch-fid's file names)."""

    name: str
    relpath: str  # relative to checkpoints_dir(); also the layout expected under a --mirror URL
    url: str
    sha256: str
    size: int
    used_by: str

    def path(self) -> Path:
        return checkpoints_dir() / self.relpath


_LPIPS_RAW = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1"
# File names as p2p_eval.inception and p2p_eval.lpips look for them.
REGISTRY: tuple[WeightFile, ...] = (
    WeightFile(
        "fid-inception",
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        95_628_359,
        "FID, KID",
    ),
    WeightFile(
        "alexnet",
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
        244_408_911,
        "LPIPS alex",
    ),
    WeightFile(
        "vgg16",
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        553_433_881,
        "LPIPS vgg",
    ),
    WeightFile(
        "lpips-alex",
        "lpips_v0.1/alex.pth",
        f"{_LPIPS_RAW}/alex.pth",
        "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        6_009,
        "LPIPS alex (linear layers)",
    ),
    WeightFile(
        "lpips-vgg",
        "lpips_v0.1/vgg.pth",
        f"{_LPIPS_RAW}/vgg.pth",
        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        7_289,
        "LPIPS vgg (linear layers)",
    ),
)


def registry() -> tuple[WeightFile, ...]:
    return REGISTRY


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_status(entry: WeightFile) -> str:
    """`ok`, `missing`, or `wrong hash` (a file that is not the published one: truncated, another release)."""
    path = entry.path()
    if not path.is_file():
        return "missing"
    if path.stat().st_size != entry.size or sha256_of(path) != entry.sha256:
        return "wrong hash"
    return "ok"


def select(names: list[str], all_files: bool) -> list[WeightFile]:
    """The registry entries named (or all of them); UserError naming an unknown one."""
    entries = registry()
    if all_files or not names:
        return list(entries)
    known = {e.name: e for e in entries}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown weight file(s) {', '.join(unknown)}; choose from {', '.join(known)} or --all")
    return [known[n] for n in dict.fromkeys(names)]


def source_url(entry: WeightFile, mirror: str | None) -> str:
    """The canonical URL, or MIRROR/relpath (a mirror has the layout of a torch hub checkpoints folder)."""
    if not mirror:
        return entry.url
    if "://" not in mirror:  # a plain folder
        return Path(mirror).resolve().joinpath(entry.relpath).as_uri()
    return mirror.rstrip("/") + "/" + entry.relpath


def fetch(entry: WeightFile, mirror: str | None = None, timeout: float = 60.0) -> Path:
    """Download `entry` into the cache: streamed into a temporary file beside its final name,
    hashed while it arrives, renamed into place only when size and sha256 match. A mismatch or a
    failed transfer raises UserError and leaves no file behind (an existing file is untouched)."""
    import urllib.error
    import urllib.request

    from p2p_dist.fsutil import atomic_path

    url = source_url(entry, mirror)
    final = entry.path()
    try:
        with atomic_path(final, suffix=".part") as tmp:
            digest, size = hashlib.sha256(), 0
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    size += len(chunk)
                    if size > entry.size:
                        raise UserError(
                            f"{url} is larger than the {entry.size} bytes of {entry.relpath}: refused, nothing kept"
                        )
                    digest.update(chunk)
                    out.write(chunk)
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise UserError(
                    f"{url}: sha256 {digest.hexdigest()} ({size} bytes) is not the published "
                    f"{entry.sha256} ({entry.size} bytes) of {entry.relpath}: refused, nothing kept"
                )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"could not download {url}: {reason}; nothing kept (use --mirror URL for another source, file:// included)"
        ) from None
    return final
