"""The fused CPU kernel of LN/GN + Proxy Norm + SiLU (`csrc/proxy_norm_cpu.cpp`), compiled on first use.

torch's JIT extension builder compiles it once per machine into its cache (~/.cache/torch_extensions, or
$TORCH_EXTENSIONS_DIR) in about 15 s and loads it from there afterwards. It needs a C++ compiler and ninja; where
either is missing, or with G16NET_CPU_KERNEL=0, the layers run the same formulas with ATen ops (slower on CPU,
numerically the same to fp32 rounding), after one warning that says why.
"""

import logging
import os
import shutil
import sysconfig
import warnings
from functools import lru_cache
from pathlib import Path

import torch

ENV = "G16NET_CPU_KERNEL"
SOURCE = Path(__file__).with_name("csrc") / "proxy_norm_cpu.cpp"
# The instruction sets torch itself dispatches to on this CPU, spelled as compiler flags: part of the build's name,
# so a cache shared by machines of different CPUs never hands one a binary it cannot run.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


def _find_ninja():
    """torch's builder looks for ninja on PATH only; the `ninja` wheel installs it next to this Python, which is
    not on PATH when a virtual environment's python is run without activating it."""
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja") is None and scripts and shutil.which("ninja", path=scripts):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


@lru_cache(maxsize=1)
def ops():
    """`torch.ops.g16net_pn` (forward, backward), or None where the kernel is switched off or cannot be built."""
    if os.environ.get(ENV, "1") == "0":
        return None
    _find_ninja()
    isa = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math", *_ISA_FLAGS.get(isa, [])]
    # Importing the builder logs a CUDA_HOME notice on CUDA builds of torch without a CUDA toolkit: not our concern.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load

        load(f"g16net_pn_{isa.lower()}", [str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
             is_python_module=False, verbose=False)
    except Exception as err:  # no compiler, no ninja, a read-only cache: the ATen path still works
        warnings.warn(f"g16net: the fused CPU kernel of Proxy Norm could not be built ({type(err).__name__}: "
                      f"{str(err).strip()[:300]}); using ATen ops instead (slower on CPU). Set {ENV}=0 to skip "
                      f"the attempt.", RuntimeWarning, stacklevel=2)
        return None
    finally:
        logger.setLevel(level)
    return torch.ops.g16net_pn
