"""Package discovery for the wheel (everything else is in pyproject.toml).

Every package under p2p_dist/ and eval/ (installed as p2p_eval) is found here, so a new subpackage
can never be left out of an installed p2p-dist (tests/system/test_wheel.py builds and trains from one).
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["p2p_dist", "p2p_dist.*"])
    + ["p2p_eval" + name.removeprefix("eval") for name in find_packages(include=["eval", "eval.*"])]
)
