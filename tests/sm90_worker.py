"""Compile every Triton kernel for an H100/H200 (sm_90) without a GPU.

Run by tests/test_kernel_sm90.py in a subprocess without TRITON_INTERPRET
(the interpreter replaces ``@triton.jit`` functions, so nothing could be
compiled in the test process). The kernel wrappers run on CPU tensors at the
model's real shapes with each kernel replaced by a recorder, so they launch
nothing; every recorded launch is then compiled by Triton's own compiler,
through ptxas to a cubin, for ``GPUTarget("cuda", 90, 32)``. The interpreter
accepts code that the compiler rejects (types, ``tl.dot`` shapes, shared
memory), which is what this catches on a machine without a GPU.

Prints one JSON line: {"kernel [config]": {"shared": bytes, "mma": bool, "fp64": bool}}.
"""

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sacd_fast.kernels import anomaly_map, feacali, simplex  # noqa: E402

TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
         torch.int32: "i32", torch.int64: "i64"}
LAUNCHES: list[tuple[str, object, tuple, dict]] = []


class Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, label: str, kernel):
        self.label, self.kernel = label, kernel

    def __getitem__(self, grid):
        return lambda *args, **kwargs: LAUNCHES.append((self.label, self.kernel, args, kwargs))


def record(module, label: str):
    for name, value in vars(module).copy().items():
        if isinstance(value, (triton.runtime.jit.JITFunction, triton.runtime.Autotuner)) and name.endswith("_kernel"):
            setattr(module, name, Recorder(f"{name} [{label}]", value))


def restore(module):
    for name, value in vars(module).copy().items():
        if isinstance(value, Recorder):
            setattr(module, name, value.kernel)


def specialise(value) -> tuple[str, bool]:
    """Triton type of a launch argument and whether it is 16-divisible (a
    pointer's address or an integer), as the JIT specialises them; the integer
    1 becomes the constexpr "constexpr"."""
    if isinstance(value, torch.Tensor):
        return "*" + TYPES[value.dtype], value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", False
        return ("i32" if -2**31 <= value < 2**31 else "i64"), value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"no Triton type for {type(value).__name__}")


def compile_launch(kernel, args: tuple, kwargs: dict):
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = dict(zip(kernel.arg_names, args))
    values.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(kernel.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        signature[param.name], divisible = specialise(value)
        if signature[param.name] == "constexpr":
            constexprs[param.name] = value
        elif divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def wide_resnet_launches():
    """The wrappers at WideResNet-50-2 / 256² shapes (batch 2: only the sizes matter)."""
    scales = [(256, 64), (512, 32), (1024, 16)]
    for dtype in (torch.float32, torch.bfloat16):
        label = f"{TYPES[dtype]}"
        for module in (anomaly_map, feacali):
            record(module, label)
        teacher = [torch.empty(2, c, s, s, dtype=dtype).to(memory_format=torch.channels_last) for c, s in scales]
        anomaly_map.cosine_anomaly_map_triton(teacher, teacher, (256, 256), 4.0, "add")
        for c, s in scales:
            widths = [c, c // 2, c // 4, c // 2, c]
            x = torch.empty(2, c, s, s, dtype=dtype).to(memory_format=torch.channels_last)
            weights = [torch.empty(b, a, 3, 3) for a, b in zip(widths, widths[1:])]
            feacali.conv_in_lrelu_stack_triton(x, weights)
        for module in (anomaly_map, feacali):
            restore(module)
    record(feacali, "training")
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    weight = torch.randn(32, 64, 3, 3, requires_grad=True)
    feacali.conv_in_lrelu_triton(x, weight).sum().backward()
    restore(feacali)
    record(simplex, "synthesis")
    seeds = torch.arange(2, dtype=torch.int64)
    simplex.simplex_noise3d_triton((2, 3, 256, 256), seeds)
    simplex.synthesize_triton(torch.empty(2, 3, 256, 256), seeds, 0.2, (10, 32), (10, 32))
    restore(simplex)


def variants(kernel, kwargs: dict):
    """(JITFunction, launch keywords) for a kernel, one per autotuning config."""
    if isinstance(kernel, triton.runtime.Autotuner):
        return [(kernel.fn, {**kwargs, **config.kwargs, "num_warps": config.num_warps,
                             "num_stages": config.num_stages}) for config in kernel.configs]
    return [(kernel, kwargs)]


def main() -> int:
    wide_resnet_launches()
    report = {}
    for label, kernel, args, kwargs in LAUNCHES:
        for fn, launch in variants(kernel, kwargs):
            name = label + " " + ",".join(f"{k}={v}" for k, v in sorted(launch.items()))
            name += " " + ",".join(t for t, _ in map(specialise, args) if t.startswith("*"))
            if name in report:
                continue
            compiled = compile_launch(fn, args, dict(launch))
            ptx = compiled.asm["ptx"]
            report[name] = {"shared": compiled.metadata.shared, "mma": "mma" in ptx, "fp64": ".f64" in ptx}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
