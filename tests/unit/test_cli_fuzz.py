"""Malformed configs and command lines thrown at every console command (hypothesis).

Whatever comes in, a command either succeeds (exit 0) or exits 2 with its reason on the last line of
stderr: `error: ...` (our one-line errors) or argparse's `PROG: error: ...` after its usage text.
A traceback, another exit code or an exception escaping `main` is a failure. The commands run
in-process through `main(argv)`; the file arguments they get are real files on disk: garbage bytes,
empty files, empty folders, random JSON, tiny images."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from p2p_dist.config import Config, config_from_dict
from p2p_dist.data.cli import main as p2p_data
from p2p_dist.inference.cli import translate_main as p2p_translate
from p2p_dist.models.cli import main as p2p_convert
from p2p_dist.train.cli import main as p2p_train
from p2p_eval.cli import main as p2p_eval

FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LAST_LINE_ERROR = re.compile(r"^(?:[\w.-]+(?: [\w.-]+)*: )?error: \S")


def call(main, argv: list[str]) -> tuple[int, str, str]:
    """Run a console `main` in-process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return code, out.getvalue(), err.getvalue()


def assert_clean(main, argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout) after checking the exit code and the error line."""
    code, out, err = call(main, argv)
    assert "Traceback" not in err and "Traceback" not in out, f"{argv}:\n{err[-3000:]}"
    assert code in (0, 2), f"{argv} exited {code}:\n{err[-3000:]}"
    if code == 2:
        lines = [x for x in err.strip().split("\n") if x.strip()]  # not splitlines: \x85 is no newline here
        assert lines and LAST_LINE_ERROR.match(lines[-1]), f"{argv}: no one-line reason:\n{err[-3000:]}"
        ours = [x for x in lines if x.startswith("error:")]
        assert len(ours) <= 1, f"{argv}: several error lines:\n{err}"
    return code, out


# --- p2p-train: overrides and recipe files --------------------------------------------------------

SECTIONS = {s: sorted(getattr(Config(), s).__dataclass_fields__) for s in Config.__dataclass_fields__}
KEYS = [f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys]
odd_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
values = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1",
            "2",
            "1e30",
            "-1e-3",
            "inf",
            "nan",
            ".nan",
            "true",
            "no",
            "null",
            "~",
            "[1, 2]",
            "{a: 1}",
            "{000000..000009}",
            "256",
            "3.5",
            "0x10",
            "'quoted'",
            "AtoB",
            "batch",
            "unet_128",
            "colorization",
            ":",
            "- x",
            "&a",
            "*a",
            "!!python/object:os.system",
        ]
    ),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    odd_text,
)
keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(list(SECTIONS)),
    st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(list(SECTIONS)), odd_text),
    odd_text,
    st.sampled_from(KEYS).map(lambda k: k + "s"),
    st.sampled_from(KEYS).map(str.upper),
)
override = st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, values), odd_text, st.sampled_from(KEYS))


@FUZZ
@given(st.lists(override, max_size=5))
def test_train_overrides(overrides):
    argv = ["--print-config", *(o if not o.startswith("-") else "x" + o for o in overrides)]
    code, out = assert_clean(p2p_train, argv)
    if code == 0:
        config_from_dict(yaml.safe_load(out))  # what it prints is a valid config again


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**20),
    st.floats(),
    odd_text,
    st.sampled_from(["AtoB", "unet_256", "linear_decay", "1e-3", "auto"]),
)
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.sampled_from([k for ks in SECTIONS.values() for k in ks]), odd_text, st.integers()),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
recipes = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from([*SECTIONS, "base"]), odd_text), trees, max_size=4),
    st.dictionaries(
        st.sampled_from(list(SECTIONS)),
        st.dictionaries(st.sampled_from([k for ks in SECTIONS.values() for k in ks]), scalars, max_size=4),
        max_size=5,
    ),
    trees,
)


@pytest.fixture(scope="module", autouse=True)
def workdir(tmp_path_factory) -> Path:
    """The scratch folder, also the working directory: drawn words become relative output paths."""
    folder = tmp_path_factory.mktemp("fuzz")
    before = os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(before)


@FUZZ
@given(tree=recipes, raw=st.one_of(st.none(), st.binary(max_size=200), odd_text))
def test_train_recipe_files(workdir, tree, raw):
    recipe = workdir / "recipe.yaml"
    if raw is None:
        recipe.write_text(yaml.safe_dump(tree, allow_unicode=True))
    else:
        recipe.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    code, out = assert_clean(p2p_train, ["--config", str(recipe), "--print-config"])
    if code == 0:
        config_from_dict(yaml.safe_load(out))


# --- the other commands: random command lines over real, broken files ---------------------------


@pytest.fixture(scope="module")
def files(workdir) -> dict[str, str]:
    """Paths a confused user might pass: garbage, empty, wrong kind, tiny real images."""
    rng = np.random.default_rng(0)
    f = workdir / "files"
    (f / "empty").mkdir(parents=True)
    (f / "imgs").mkdir()
    for i, size in enumerate([(32, 32), (40, 24)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(f / "imgs" / f"x{i}.png")
    (f / "garbage.bin").write_bytes(rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
    (f / "zero.pth").write_bytes(b"")
    (f / "text.tar").write_text("not a tar")
    (f / "fake_ckpt").mkdir()
    (f / "fake_ckpt" / "generator.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    (f / "fake_ckpt" / "generator.json").write_text(json.dumps({"format": 1, "name": "unet_256", "ngf": -3}))
    (f / "shards").mkdir()
    (f / "shards" / "s-000000.tar").write_bytes(b"\0" * 1024)
    (f / "shards" / "index.json").write_text('{"format": 1, "task": "nonsense", "shards": 3}')
    names = [
        "empty",
        "imgs",
        "imgs/x0.png",
        "garbage.bin",
        "zero.pth",
        "text.tar",
        "fake_ckpt",
        "fake_ckpt/generator.json",
        "shards",
        "shards/index.json",
    ]
    paths = {n: str(f / n) for n in names}
    paths["missing"] = str(f / "missing" / "x")
    paths["under-a-file"] = str(f / "garbage.bin" / "out")
    return paths


VALUES = [
    "0",
    "1",
    "2",
    "-3",
    "3.5",
    "x",
    "",
    "auto",
    "never",
    "always",
    "AtoB",
    "BtoA",
    "::",
    "unet_256",
    "unet_128",
    "resnet_9blocks",
    "batch",
    "instance",
    "cpu",
    "cuda:7",
    "paper",
    "eval",
    "png",
    "l1,psnr",
    "fid",
]


def value(paths: list[str]):
    return st.one_of(st.sampled_from(VALUES), st.sampled_from(paths), odd_text.filter(lambda t: not t.startswith("-")))


def command_line(paths: list[str], heads: list[list], options: list[str]):
    """A mostly well-formed command line: one of `heads` (its None slots filled with paths or
    values), then options with values (or without), now and then a stray word."""

    def fill(head):
        return st.tuples(*[st.just(w) if w is not None else value(paths) for w in head]).map(list)

    extra = st.lists(
        st.one_of(
            st.tuples(st.sampled_from(options), value(paths)).map(list),
            st.sampled_from(options).map(lambda o: [o]),
            value(paths).map(lambda v: [v]),
        ),
        max_size=4,
    ).map(lambda parts: [w for part in parts for w in part])
    return st.tuples(st.sampled_from(heads).flatmap(fill), extra).map(lambda t: t[0] + t[1])


def paths_of(files: dict[str, str], workdir: Path) -> list[str]:
    return [*files.values(), *(str(workdir / "out" / name) for name in ("a", "b"))]


DATA_HEADS = [["pack", kind, None, None] for kind in ("aligned", "colorization", "cityscapes")] + [
    ["pack", "paired", None, None, None],
    ["inspect", None],
    [None],
]
DATA_OPTS = [
    "--shard-size",
    "--workers",
    "--resize",
    "--keep-aspect",
    "--quality",
    "--format",
    "--name",
    "--overwrite",
    "--resume",
    "--split",
    "--out",
    "--samples",
    "--verify",
]


@FUZZ
@given(data=st.data())
def test_p2p_data_command_lines(files, workdir, data):
    argv = data.draw(command_line(paths_of(files, workdir), DATA_HEADS, DATA_OPTS))
    assert_clean(p2p_data, argv)


TRANSLATE_HEADS = [
    ["--checkpoint", None, "--input", None, "--output", None],
    ["--checkpoint", None, "--shards", None, "--output", None],
    ["--checkpoint", None, "--input", None, "--output", None, "--from-reference", "--arch", None],
    [None],
]
TRANSLATE_OPTS = [
    "--aligned",
    "--direction",
    "--mode",
    "--batch-size",
    "--device",
    "--resize",
    "--size",
    "--seed",
    "--workers",
    "--arch",
    "--norm",
    "--ngf",
    "--in-channels",
    "--out-channels",
    "--no-dropout",
]


@FUZZ
@given(data=st.data())
def test_p2p_translate_command_lines(files, workdir, data):
    assert_clean(p2p_translate, data.draw(command_line(paths_of(files, workdir), TRANSLATE_HEADS, TRANSLATE_OPTS)))


EVAL_HEADS = [
    ["score", "--out", None, "--pred", None, "--target", None],
    ["score", "--out", None, "--pred", None, "--shards", None],
    ["score", "--out", None, "--checkpoint", None, "--shards", None],
    ["compare", None, None, "--out", None],
    ["fcn-train", "--shards", None, "--out", None],
    [None],
]
EVAL_OPTS = [
    "--inputs",
    "--fcn",
    "--mode",
    "--task",
    "--direction",
    "--size",
    "--resize",
    "--metrics",
    "--batch-size",
    "--eval-mode",
    "--seed",
    "--name",
    "--grid",
    "--num-workers",
]


@FUZZ
@given(data=st.data())
def test_p2p_eval_command_lines(files, workdir, data):
    assert_clean(p2p_eval, data.draw(command_line(paths_of(files, workdir), EVAL_HEADS, EVAL_OPTS)))


CONVERT_HEADS = [[None, None, "--arch", None], [None, None]]
CONVERT_OPTS = ["--arch", "--norm", "--in-channels", "--out-channels", "--ngf", "--no-dropout", "--task", "--direction"]


@FUZZ
@given(data=st.data())
def test_p2p_convert_command_lines(files, workdir, data):
    assert_clean(p2p_convert, data.draw(command_line(paths_of(files, workdir), CONVERT_HEADS, CONVERT_OPTS)))
