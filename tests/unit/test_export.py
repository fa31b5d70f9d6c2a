"""Our checkpoint format: generator.safetensors + generator.json, round trips and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from p2p_dist.errors import UserError
from p2p_dist.models import GeneratorSpec, build_generator, load_generator, save_generator, set_inference_mode

SPEC = GeneratorSpec(name="unet_128", ngf=8, norm="batch", dropout=True, direction="BtoA", image_size=128)


def _trained_like(spec=SPEC):
    """A generator whose BatchNorm statistics are not the defaults (as after training)."""
    torch.manual_seed(0)
    G = spec.build()
    with torch.no_grad():
        G.train()(torch.randn(4, spec.in_channels, 128, 128))
    return G


def _same_outputs(a: nn.Module, b: nn.Module, cin=3):
    x = torch.randn(2, cin, 128, 128)
    with torch.no_grad():
        return torch.equal(set_inference_mode(a, "eval")(x), set_inference_mode(b, "eval")(x))


def test_round_trip_through_file_json_folder_and_run_folder(tmp_path):
    G = _trained_like()
    weights = save_generator(G, SPEC, tmp_path / "run" / "final")
    assert weights == tmp_path / "run" / "final" / "generator.safetensors"
    assert sorted(p.name for p in weights.parent.iterdir()) == [
        "generator.json",
        "generator.safetensors",
    ]  # no temp files
    spec_json = json.loads((weights.parent / "generator.json").read_text())
    for key in ("format", "name", "in_channels", "out_channels", "ngf", "norm", "dropout"):
        assert key in spec_json
    assert spec_json["format"] == 1 and spec_json["name"] == "unet_128" and spec_json["direction"] == "BtoA"
    for path in (weights, weights.parent / "generator.json", weights.parent, tmp_path / "run"):
        loaded, spec = load_generator(path)
        assert spec == SPEC
        assert _same_outputs(G, loaded)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
def test_wrapped_modules_and_prefixed_state_dicts_are_saved_clean(tmp_path):
    G = _trained_like()
    compiled = torch.compile(G)  # not run: only the _orig_mod wrapper matters here
    wrapped = nn.DataParallel(compiled)  # .module (as DDP) around ._orig_mod
    save_generator(wrapped, SPEC, tmp_path / "a")
    prefixed = {f"module._orig_mod.{k}": v for k, v in G.state_dict().items()}
    save_generator(prefixed, SPEC, tmp_path / "b")
    for folder in ("a", "b"):
        loaded, _ = load_generator(tmp_path / folder)
        assert _same_outputs(G, loaded)


def test_colorization_spec_round_trip(tmp_path):
    spec = GeneratorSpec(
        name="resnet_9blocks", in_channels=1, out_channels=2, ngf=8, norm="instance", dropout=False, task="colorization"
    )
    G = spec.build()
    save_generator(G, spec, tmp_path)
    loaded, got = load_generator(tmp_path / "generator.safetensors")
    assert got == spec and got.is_colorization
    assert _same_outputs(G, loaded, cin=1)


def test_weights_that_do_not_match_the_spec_are_refused_before_writing(tmp_path):
    G = build_generator("unet_128", ngf=16)
    with pytest.raises(UserError, match="has shape"):
        save_generator(G, SPEC, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(UserError, match="missing key"):
        save_generator({"down.0.0.weight": torch.zeros(8, 3, 4, 4)}, SPEC, tmp_path / "out")


def test_spec_in_the_metadata_is_used_when_the_json_is_gone(tmp_path):
    G = _trained_like()
    save_generator(G, SPEC, tmp_path)
    (tmp_path / "generator.json").unlink()
    loaded, spec = load_generator(tmp_path)
    assert spec == SPEC and _same_outputs(G, loaded)


def test_json_of_another_architecture_is_refused(tmp_path):
    save_generator(_trained_like(), SPEC, tmp_path)
    (tmp_path / "generator.json").write_text(json.dumps({**SPEC.to_dict(), "name": "unet_256"}))
    with pytest.raises(UserError, match="does not match the architecture: missing key 'down.6.2.weight'"):
        load_generator(tmp_path)
    (tmp_path / "generator.json").write_text(json.dumps({**SPEC.to_dict(), "ngf": 16}))
    with pytest.raises(UserError, match="has shape"):
        load_generator(tmp_path)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_generator(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no generator.safetensors"):
        load_generator(tmp_path / "empty")
    junk = tmp_path / "junk" / "generator.safetensors"
    junk.parent.mkdir()
    junk.write_bytes(b"\x00" * 64)
    (junk.parent / "generator.json").write_text(json.dumps(SPEC.to_dict()))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_generator(junk)
    (junk.parent / "generator.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_generator(junk)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(UserError, match="no generator.json beside it and no architecture"):
        load_generator(bare)
    pth = tmp_path / "latest_net_G.pth"
    torch.save({}, pth)
    with pytest.raises(UserError, match="--from-reference"):
        load_generator(pth)


def test_spec_validation():
    with pytest.raises(UserError, match="format 2"):
        GeneratorSpec.from_dict({**SPEC.to_dict(), "format": 2})
    with pytest.raises(UserError, match="no 'name'"):
        GeneratorSpec.from_dict({"format": 1})
    with pytest.raises(UserError, match="norm 'group'"):
        GeneratorSpec.from_dict({"name": "unet_256", "norm": "group"})
    with pytest.raises(UserError, match="ngf must be a positive integer"):
        GeneratorSpec(name="unet_256", ngf=0)
    with pytest.raises(UserError, match="name 'unet_512'"):
        GeneratorSpec(name="unet_512")
    # unknown keys from a newer writer are ignored; the defaults fill optional ones
    spec = GeneratorSpec.from_dict({"format": 1, "name": "resnet_9blocks", "future_key": 1})
    assert spec == GeneratorSpec(name="resnet_9blocks")
    assert GeneratorSpec.from_dict(SPEC.to_dict()) == SPEC


def test_exported_files_get_the_usual_permissions(tmp_path):
    """safetensors replaces the private temp file it is given; the export still ends up 0666 - umask."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        weights = save_generator(_trained_like(), SPEC, tmp_path / "g")
    finally:
        os.umask(old)
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "g" / "generator.json").stat().st_mode) == 0o644
