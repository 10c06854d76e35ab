"""Record the Triton launches that the kernel launchers make, without running them.

Inside ``recording()`` every ``@triton.jit`` function (and autotuned kernel) of
the ``sacd_fast.kernels`` modules is replaced by a recorder: the launchers run
on any tensors (``meta`` ones included, so a batch of 4,096 costs no memory),
and each ``kernel[grid](*args, **kwargs)`` is kept as a :class:`Launch`.
Helpers that are only called from inside kernels are replaced too, which is
harmless: no kernel body runs. Used by the kernel report
(:mod:`sacd_fast.kernels.report`), the launch-geometry test and the sm_90
compile test.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass

import triton

import sacd_fast.kernels as kernels_package

# @triton.jit functions (JITFunction, or InterpretedFunction under TRITON_INTERPRET=1) and autotuned kernels.
JIT_TYPES = (triton.runtime.jit.KernelInterface,)


def kernel_modules() -> list:
    """Every module of the kernels package that holds a ``@triton.jit`` function
    (each op's ``triton.py``)."""
    modules = []
    for info in pkgutil.walk_packages(kernels_package.__path__, f"{kernels_package.__name__}."):
        module = importlib.import_module(info.name)
        if any(isinstance(v, JIT_TYPES) for v in vars(module).values()):
            modules.append(module)
    return modules


def op_name(module) -> str:
    """The op a kernel module belongs to: ``anomaly_map`` for ``sacd_fast.kernels.anomaly_map.triton``."""
    return module.__name__.split(".")[-2]


def jit_functions() -> dict[str, object]:
    """``{"op.name": JITFunction or Autotuner}`` for the whole kernels package."""
    return {f"{op_name(m)}.{name}": value for m in kernel_modules()
            for name, value in vars(m).items() if isinstance(value, JIT_TYPES)}


def base_function(kernel):
    """The @triton.jit function under an autotuner (the kernel itself otherwise)."""
    return kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel


def source(kernel) -> str:
    """The Python source of a @triton.jit function or autotuned kernel."""
    return inspect.getsource(base_function(kernel).fn)


@dataclass
class Launch:
    name: str  # "module.kernel"
    kernel: object  # the JITFunction or Autotuner
    grid: object  # a tuple, or a function of the launch's meta-parameters
    args: tuple
    kwargs: dict

    def configs(self) -> list[dict]:
        """The launch's keywords once per autotuning config that the autotuner
        would try here (after its pruning); one entry when not autotuned."""
        kernel = self.kernel
        if not isinstance(kernel, triton.runtime.Autotuner):
            return [dict(self.kwargs)]
        configs = kernel.configs
        if kernel.early_config_prune:
            named = {**dict(zip(kernel.arg_names, self.args)), **self.kwargs}
            configs = kernel.early_config_prune(configs, named, **self.kwargs)
        return [{**self.kwargs, **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
                for config in configs]

    def grids(self) -> list[tuple[int, ...]]:
        """The grid of every config, padded to three axes."""
        grids = []
        for meta in self.configs():
            grid = self.grid(meta) if callable(self.grid) else self.grid
            grids.append(tuple(grid) + (1,) * (3 - len(grid)))
        return grids


class _Recorder:
    def __init__(self, name: str, kernel, launches: list):
        self.name, self.kernel, self.launches = name, kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(Launch(self.name, self.kernel, grid, args, kwargs))


@contextlib.contextmanager
def recording():
    """Yields the list that collects every launch made inside the block."""
    launches: list[Launch] = []
    patched = []
    for module in kernel_modules():
        short = op_name(module)
        for name, value in list(vars(module).items()):
            if isinstance(value, JIT_TYPES):
                setattr(module, name, _Recorder(f"{short}.{name}", value, launches))
                patched.append((module, name, value))
    try:
        yield launches
    finally:
        for module, name, value in patched:
            setattr(module, name, value)
