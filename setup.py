"""Builds csrc/ into the compiled extension ``headwater._C`` with pybind11, and nothing else.

All metadata lives in pyproject.toml.
"""
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "headwater._C",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
