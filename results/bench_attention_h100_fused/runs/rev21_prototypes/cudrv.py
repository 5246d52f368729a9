"""Launch a precompiled cubin kernel on torch's current stream through the CUDA driver API (ctypes), so the
device needs no compiler: the cubin is built on the CPU machine with nvcc from PyPI (sm_90a)."""
import ctypes

import torch

_cuda = ctypes.CDLL("libcuda.so.1")


def _ok(rc: int, what: str) -> None:
    if rc != 0:
        name = ctypes.c_char_p()
        _cuda.cuGetErrorName(rc, ctypes.byref(name))
        raise RuntimeError(f"{what} failed: {rc} {name.value}")


class Kernel:
    def __init__(self, cubin_path: str, name: str, smem: int) -> None:
        torch.cuda.init()
        torch.zeros(1, device="cuda")  # the primary context is current from here on
        self.mod, self.fn, self.smem = ctypes.c_void_p(), ctypes.c_void_p(), smem
        data = open(cubin_path, "rb").read()
        _ok(_cuda.cuModuleLoadData(ctypes.byref(self.mod), data), "cuModuleLoadData")
        _ok(_cuda.cuModuleGetFunction(ctypes.byref(self.fn), self.mod, name.encode()), "cuModuleGetFunction")
        regs = ctypes.c_int()
        _ok(_cuda.cuFuncGetAttribute(ctypes.byref(regs), 4, self.fn), "cuFuncGetAttribute")  # NUM_REGS
        self.regs = regs.value

    def __call__(self, grid, block, *args) -> None:
        vals = []
        for a in args:
            if isinstance(a, torch.Tensor):
                vals.append(ctypes.c_uint64(a.data_ptr()))
            elif isinstance(a, tuple):  # ("i64", v) / ("i32", v) / ("f32", v)
                kind, v = a
                vals.append({"i64": ctypes.c_int64, "i32": ctypes.c_int32, "f32": ctypes.c_float}[kind](v))
            else:
                raise TypeError(type(a))
        params = (ctypes.c_void_p * len(vals))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in vals])
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        _ok(_cuda.cuLaunchKernel(self.fn, *grid, *block, self.smem, stream, params, None), "cuLaunchKernel")
