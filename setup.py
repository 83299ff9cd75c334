"""Build: cythonize the fast-path kernels (and gateway.wire) and generate the protobuf/gRPC code.

Both steps run on every build (``pip install -e .``, ``python setup.py build_ext
--inplace``), so a clean clone needs nothing but this file and its build requirements.
Generated code lands in ``proto/pretrade/v1/`` beside the .proto files, is importable as
``pretrade.v1`` and is never committed.
"""

from __future__ import annotations

import pathlib
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

ROOT = pathlib.Path(__file__).parent.resolve()
PROTO_ROOT = ROOT / "proto"


def generate_protos() -> None:
    """Run protoc (from grpcio-tools) over proto/pretrade/v1/*.proto into proto/."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "pretrade").rglob("*.proto"))
    if not protos:
        return
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={PROTO_ROOT}",
        f"--pyi_out={PROTO_ROOT}",
        f"--grpc_python_out={PROTO_ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on " + " ".join(protos))
    for package_dir in {(PROTO_ROOT / p).parent for p in protos} | {PROTO_ROOT / "pretrade"}:
        (package_dir / "__init__.py").touch()


generate_protos()

#: Packages with compiled modules: the kernels (fastpath) and the order path's wire
#: encoding (gateway.wire).
COMPILED_PACKAGES = ("fastpath", "gateway")

extensions = [
    Extension(
        f"{package}.{pyx.stem}",
        [str(pyx.relative_to(ROOT))],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
    for package in COMPILED_PACKAGES
    for pyx in sorted((ROOT / package).glob("*.pyx"))
]

setup(
    packages=find_packages(include=["fastpath*", "gateway*", "ledger*", "halts*", "watchdogs*", "clients*"])
    + ["pretrade", "pretrade.v1"],
    package_dir={"pretrade": "proto/pretrade"},
    package_data={
        "fastpath": ["*.pxd", "*.pyi", "py.typed"],
        "gateway": ["*.pxd", "*.pyi"],
        "pretrade.v1": ["*.proto", "*.pyi"],
    },
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
