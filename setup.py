"""Builds csrc/ into the compiled extension ``headwater._C`` with pybind11, and nothing else.

All metadata lives in pyproject.toml.
"""
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

sources = sorted(glob("csrc/*.cpp"))
ext_modules = [
    Pybind11Extension(
        "headwater._C",
        sources,
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
] if sources else []  # a source tree without csrc/ still installs; kernels then fall back to torch

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
