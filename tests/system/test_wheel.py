"""An installed p2p-dist trains (issue 26 item 1): the wheel built from this tree, installed into an
empty folder, imports every module of p2p_dist and p2p_eval and trains a few steps on real shards
with a built-in recipe named as a user would (`p2p-train --config demo`, whose `base:` is another
built-in recipe), from a working directory outside the clone. The dependencies come from the venv;
nothing is downloaded (the build uses the venv's setuptools)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.env import ROOT, subprocess_env

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "setup.py", "README.md", "p2p_dist", "eval", "recipes")

IMPORT_ALL = """
import importlib, json, pkgutil, sys
names = []
for top in ("p2p_dist", "p2p_eval"):
    package = importlib.import_module(top)
    names.append(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if not info.name.endswith(".__main__"):  # these run their command when imported
            names.append(info.name)
files = {name: importlib.import_module(name).__file__ for name in names}
print(json.dumps(files))
"""


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:3]} exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_installed_wheel_imports_everything_and_trains_with_a_builtin_recipe(tmp_path):
    # a copy of what the build reads (a build folder left in the clone could hold stale modules)
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    env = subprocess_env()
    _run(
        [*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", str(src), "-w", str(tmp_path / "whl")],
        tmp_path,
        env,
    )
    (wheel,) = (tmp_path / "whl").glob("p2p_dist-*.whl")
    target = tmp_path / "target"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], tmp_path, env)
    shutil.rmtree(src)  # nothing of the clone is left to fall back on but the venv's editable install
    work = tmp_path / "work"
    work.mkdir()
    env = subprocess_env(PYTHONPATH=str(target))

    files = json.loads(_run([sys.executable, "-c", IMPORT_ALL], work, env).stdout)
    packages = {name for name in files if files[name].endswith("__init__.py")}
    assert {"p2p_dist.train.engines", "p2p_dist.inference", "p2p_eval"} <= packages, sorted(packages)
    on_disk = {p for p in (ROOT / "p2p_dist").rglob("*.py") if p.name != "__main__.py"}
    on_disk |= {p for p in (ROOT / "eval").rglob("*.py") if p.name != "__main__.py"}
    assert len(files) == len(on_disk), sorted(files)
    outside = {name: f for name, f in files.items() if not Path(f).resolve().is_relative_to(target.resolve())}
    assert not outside, outside  # every module came from the installed wheel

    data, run = work / "data", work / "run"
    _run([str(target / "bin" / "p2p-data"), "demo", "scenes", str(data), "--train", "6", "--val", "2",
          "--size", "64", "--workers", "1"], work, env)  # fmt: skip
    overrides = [
        f"data.train={data}/train", f"data.val={data}/val", f"train.output_dir={run}",
        "data.load_size=64", "data.crop_size=64", "data.num_workers=0", "model.generator=resnet_9blocks",
        "model.ngf=4", "model.ndf=8", "train.max_steps=2", "train.val_every=2", "train.checkpoint_every=0",
        "train.sample_every=0", "train.log_every=1",
    ]  # fmt: skip
    _run([str(target / "bin" / "p2p-train"), "--config", "demo", *overrides], work, env)
    config = (run / "config.yaml").read_text()
    assert "direction: BtoA" in config and "lambda_l1: 100.0" in config  # demo.yaml over its base, pix2pix_base.yaml
    assert (run / "final" / "generator.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2

    # the built-in accelerate configs are reachable by name too (README: accelerate launch --config_file ...)
    printed = _run([sys.executable, "-m", "p2p_dist.train.launch_config", "deepspeed_zero2"], work, env).stdout.strip()
    assert Path(printed).resolve().is_relative_to(target.resolve()) and Path(printed).is_file()
