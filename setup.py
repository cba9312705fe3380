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
import shlex
import subprocess
import sys

from setuptools import setup


def _cxx_runtime_link_args():
    """Link arguments that make the module use the shared C++ runtime, the one torch loads.

    A compiler whose own lib directory holds only ``libstdc++.a`` links a private, static copy
    of the C++ runtime into the module. torch and the module then share one process with two
    copies of libstdc++: a message that formats an integer (``TORCH_CHECK(ps >= 1, ..., ps)``)
    reads one copy's locale facets through the other's and crashes the interpreter instead of
    raising (seen with a GCC 13 in /opt/gcc on Ubuntu's Python 3.12, which also links with
    ``-Bsymbolic-functions``). Naming the shared ``libstdc++.so.6`` before the compiler's own
    ``-lstdc++`` makes the linker take every runtime symbol from it; where the compiler links
    that library anyway, the argument changes nothing.
    """
    if not sys.platform.startswith("linux"):
        return []
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    try:
        found = subprocess.run(
            cxx + ["-print-file-name=libstdc++.so.6"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []
    return ["-l:libstdc++.so.6"] if os.path.isabs(found) and os.path.exists(found) else []


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
    # one kernel file per device and op family: csrc/cpu/*.cpp and csrc/cpu/<family>/*.cpp, and
    # the same under csrc/cuda/ (*.cu)
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "**", "*.cpp"), recursive=True))
    want_cuda = os.environ.get("NAPARI_STNLS_CUDA")
    has_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    use_cuda = has_cuda if want_cuda is None else want_cuda == "1"
    # -g0: no debug info (Python's own CFLAGS ask for -g), a 10x smaller module and a faster build
    cxx = ["-O3", "-g0", "-fopenmp", "-std=c++17"]
    if use_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "**", "*.cu"), recursive=True))
        ext = CUDAExtension(
            "napari_stnls._C",
            sources,
            include_dirs=[os.path.join(here, "csrc", "include")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            extra_link_args=["-fopenmp", *_cxx_runtime_link_args()],
        )
        print("napari-stnls: building the C++ and CUDA kernels", file=sys.stderr)
    else:
        ext = CppExtension(
            "napari_stnls._C",
            sources,
            include_dirs=[os.path.join(here, "csrc", "include")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp", *_cxx_runtime_link_args()],
        )
        print(
            "napari-stnls: building the C++ (CPU) kernels only: "
            + ("NAPARI_STNLS_CUDA=0" if has_cuda else "this torch has no CUDA or nvcc was not found"),
            file=sys.stderr,
        )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
