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
    _register_fakes_and_autograd()
    return torch.ops.g16net_pn


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether `ops()` has the kernel; a constant to torch.compile, which then calls the ops without a graph break."""
    return ops() is not None


def _register_fakes_and_autograd():
    """Shapes for torch.compile's fake tensors, and the derivatives, of the three ops: autograd then runs them
    in eager and in compiled graphs alike, saving only the norm's input and per-group statistics."""
    lib = "g16net_pn"
    if getattr(_register_fakes_and_autograd, "done", False):  # once per process, even if `ops` is cleared
        return
    _register_fakes_and_autograd.done = True

    @torch.library.register_fake(f"{lib}::forward")
    def _(x, gamma, beta, mu, s, groups, eps):
        return torch.empty_like(x), x.new_empty(x.shape[0], groups), x.new_empty(x.shape[0], groups)

    @torch.library.register_fake(f"{lib}::backward")
    def _(grad, x, gamma, beta, mean, rstd, mu, s, groups, need_dx):
        return torch.empty_like(x) if need_dx else x.new_empty(0), x.new_empty(4, x.shape[0], x.shape[1])

    @torch.library.register_fake(f"{lib}::proxy_moments")
    def _(a, b, u, eps, sums):
        return torch.empty_like(a), torch.empty_like(a), a.new_empty((2, 2, a.shape[0]) if sums else (0,))

    def layer_setup(ctx, inputs, output):
        x, gamma, beta, mu, s, groups, _ = inputs
        ctx.groups = groups
        ctx.save_for_backward(x, gamma, beta, output[1], output[2], mu, s)

    def layer_backward(ctx, grad, _grad_mean, _grad_rstd):
        """Sums over (n, c) planes from the kernel (see its backward_impl), reduced over n here."""
        x, gamma, beta, mean, rstd, mu, s = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        dx, sums = torch.ops.g16net_pn.backward(grad.contiguous(), x, gamma, beta, mean, rstd, mu, s, ctx.groups,
                                                need_dx)
        sgz, sg, sgax, sga = sums.sum(1).unbind(0)  # sums of g (z - mu), g, ga x^, ga per channel
        return dx if need_dx else None, sgax * s, sga * s, -s * sg, sgz, None, None

    def moments_setup(ctx, inputs, output):
        ctx.n = inputs[2].shape[0]
        ctx.save_for_backward(output[1], output[2])  # s and the centred sums

    def moments_backward(ctx, gmu, gs, _grad_sums):
        from .proxy_norm import proxy_moments_grad  # that module imports this one

        return *proxy_moments_grad(gmu, gs, *ctx.saved_tensors, ctx.n), None, None, None

    torch.library.register_autograd(f"{lib}::forward", layer_backward, setup_context=layer_setup)
    torch.library.register_autograd(f"{lib}::proxy_moments", moments_backward, setup_context=moments_setup)
