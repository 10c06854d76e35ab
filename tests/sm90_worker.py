"""Compile every Triton kernel for an H100/H200 (sm_90) without a GPU.

Run by tests/test_kernel_sm90.py in a subprocess without TRITON_INTERPRET
(the interpreter replaces ``@triton.jit`` functions, so nothing could be
compiled in the test process). The launchers run on CPU tensors at the
model's real shapes, NCHW and channels_last, fp32, fp16 and bf16, with every
kernel recorded instead of launched (tests/launch_recorder.py); every recorded
launch is then compiled by Triton's own compiler for ``GPUTarget("cuda", 90, 32)``
once per autotuning config (in parallel), with ptxas's ``-v`` log giving the
register and spill counts. The interpreter accepts code that the
compiler rejects (types, ``tl.dot`` shapes, shared memory), which is what this
catches on a machine without a GPU.

Prints one JSON object on its last line:
``{"launched": {"module.kernel [variant]": {"shared", "registers", "spill_bytes",
"mma", "fp64", "acq_rel", "dtypes", "inference"}}, "jit": [every module.name]}``.
"""

import contextlib
import io
import json
import multiprocessing
import os
import re
import sys
from pathlib import Path

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import triton  # noqa: E402
from launch_recorder import base_function, jit_functions, recording  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sacd_fast.kernels.anomaly_map import triton as anomaly_map  # noqa: E402
from sacd_fast.kernels.feacali import triton as feacali  # noqa: E402
from sacd_fast.kernels.simplex import triton as simplex  # noqa: E402

TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
         torch.int32: "i32", torch.int64: "i64"}
WRN_SCALES = [(256, 64), (512, 32), (1024, 16)]


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


def compile_launch(fn, args: tuple, kwargs: dict):
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = dict(zip(fn.arg_names, args))
    values.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        signature[param.name], divisible = specialise(value)
        if signature[param.name] == "constexpr":
            constexprs[param.name] = value
        elif divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


JOBS: list[tuple] = []  # (name, JITFunction, args, config, info), read by the forked workers


def compile_variant(index: int) -> tuple[str, dict]:
    """Compile one launch for one config; ptxas's own ``-v`` log (printed by Triton
    when asked) gives the registers and spills."""
    name, fn, args, config, info = JOBS[index]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = compile_launch(fn, args, dict(config))
    ptx = compiled.asm["ptx"]
    text = log.getvalue()
    return name, {**info, "shared": compiled.metadata.shared,
                  "registers": max(int(r) for r in re.findall(r"Used (\d+) registers", text)),
                  "spill_bytes": sum(int(b) for b in re.findall(r"(\d+) bytes spill (?:stores|loads)", text)),
                  "mma": "mma" in ptx, "fp64": ".f64" in ptx, "acq_rel": "acq_rel" in ptx}


def features(dtype, channels_last, scales, batch=2):
    out = []
    for c, s in scales:
        t = torch.empty(batch, c, s, s, dtype=dtype)
        out.append(t.to(memory_format=torch.channels_last) if channels_last else t)
    return out


def inference_launches():
    """The inference launchers at WideResNet-50-2 / 256² shapes (batch 2: only the sizes matter),
    fp32, fp16 and bf16, NCHW and channels_last, one to six scales in both modes, three blur radii."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for channels_last in (False, True):
            teacher = features(dtype, channels_last, WRN_SCALES)
            anomaly_map.cosine_anomaly_map_triton(teacher, teacher, (256, 256), 4.0, "add")
            for c, s in WRN_SCALES:
                widths = [c, c // 2, c // 4, c // 2, c]
                (x,) = features(dtype, channels_last, [(c, s)])
                feacali.conv_in_lrelu_stack_triton(x, [torch.empty(b, a, 3, 3) for a, b in zip(widths, widths[1:])])
    scales = features(torch.float32, False, [(8, 5), (8, 6), (8, 7), (8, 8), (8, 9), (8, 10)])
    for count in range(1, 7):  # every SCALES / ACCUMULATE combination, both modes, blur radii 1, 8 and 16
        for mode, sigma in (("add", 0.25), ("mul", 2.0), ("add", 4.0)):
            anomaly_map.cosine_anomaly_map_triton(scales[:count], scales[:count], (32, 32), sigma, mode)


def training_launches():
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            (x,) = features(dtype, channels_last, [(64, 16)])
            x.requires_grad_()
            weight = torch.randn(32, 64, 3, 3, dtype=dtype, requires_grad=True)
            feacali.conv_in_lrelu_train(x, weight).float().sum().backward()
    seeds = torch.arange(2, dtype=torch.int64)
    simplex.simplex_noise3d_triton((2, 3, 31, 31), seeds)
    for dtype in (torch.float32, torch.bfloat16):
        simplex.synthesize_triton(torch.empty(2, 3, 256, 256, dtype=dtype), seeds, 0.2, (10, 32), (10, 32))


def main() -> int:
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's log: registers and spills
    knobs.compilation.always_compile = True  # a cached binary would come without that log
    with recording() as inference:
        inference_launches()
    with recording() as training:
        training_launches()
    jobs = {}
    for launches, is_inference in ((inference, True), (training, False)):
        for launch in launches:
            dtypes = sorted({TYPES[a.dtype] for a in launch.args if isinstance(a, torch.Tensor)})
            for config in launch.configs():
                name = launch.name + " " + ",".join(f"{k}={v}" for k, v in sorted(config.items()))
                name += " " + ",".join(t for t, _ in map(specialise, launch.args) if t != "fp32")
                if name not in jobs:
                    info = {"dtypes": dtypes, "inference": is_inference}
                    jobs[name] = (name, base_function(launch.kernel), launch.args, config, info)
    JOBS.extend(jobs.values())
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        report = dict(pool.imap_unordered(compile_variant, range(len(JOBS))))
    print(json.dumps({"launched": report, "jit": sorted(jit_functions())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
