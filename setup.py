"""Builds the compiled kernels (napari_stnls._C). Metadata lives in setup.cfg.

The C++ (CPU) extension is built everywhere; the CUDA kernels too when torch has CUDA and
nvcc is found. Build switches (environment variables):

* ``NAPARI_STNLS_BUILD=0``: build no extension (the pure-PyTorch reference is used).
* ``NAPARI_STNLS_CUDA=0|1``: force the CUDA kernels off / on (default: on when possible).
* ``TORCH_CUDA_ARCH_LIST``: CUDA architectures, honoured by torch (Hopper is ``9.0``).
* ``MAX_JOBS``: parallel compile jobs.
"""

import glob
import os
import sys

from setuptools import setup


def _extensions():
    if os.environ.get("NAPARI_STNLS_BUILD", "1") == "0":
        print("napari-stnls: NAPARI_STNLS_BUILD=0, building no compiled kernels", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print(
            "napari-stnls: torch is not importable at build time, so no compiled kernels are built. "
            "Install torch first and use `pip install --no-build-isolation -e .`",
            file=sys.stderr,
        )
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    want_cuda = os.environ.get("NAPARI_STNLS_CUDA")
    has_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    use_cuda = has_cuda if want_cuda is None else want_cuda == "1"
    cxx = ["-O3", "-fopenmp", "-std=c++17"]
    if use_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        ext = CUDAExtension(
            "napari_stnls._C",
            sources,
            include_dirs=[os.path.join(here, "csrc", "include")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
        )
        print("napari-stnls: building the C++ and CUDA kernels", file=sys.stderr)
    else:
        ext = CppExtension(
            "napari_stnls._C",
            sources,
            include_dirs=[os.path.join(here, "csrc", "include")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
        print(
            "napari-stnls: building the C++ (CPU) kernels only: "
            + ("NAPARI_STNLS_CUDA=0" if has_cuda else "this torch has no CUDA or nvcc was not found"),
            file=sys.stderr,
        )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
