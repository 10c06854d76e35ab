"""Compile recorded Triton launches for an H100/H200 (sm_90) without a GPU.

Each launch that :mod:`.recorder` kept is compiled by Triton's own compiler
for ``GPUTarget("cuda", 90, 32)`` once per autotuning config, in parallel
worker processes; ptxas's ``-v`` log gives the registers and spills. The
interpreter accepts code that the compiler rejects (types, ``tl.dot`` shapes,
shared memory), so this also checks the kernels on a machine without a GPU.
It must run without ``TRITON_INTERPRET=1``: the interpreter replaces the
``@triton.jit`` functions, so nothing could be compiled.

Occupancy follows the sm_90 limits: 65,536 registers per SM allocated per warp
in units of 256, 228 KB of shared memory per SM (1 KB of it reserved per
block), at most 2,048 threads and 32 blocks per SM.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import re

import torch

from .recorder import Launch, base_function

TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
         torch.int32: "i32", torch.int64: "i64"}
SM90 = {"sms": 132, "registers": 65536, "shared": 228 * 1024, "shared_per_block_reserved": 1024,
        "threads": 2048, "blocks": 32}


def check_not_interpreted() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compiling for sm_90 needs real @triton.jit functions: unset TRITON_INTERPRET")


def specialise(value, specialised: bool = True) -> tuple[str, bool]:
    """Triton type of a launch argument and whether it is 16-divisible (a
    pointer's address or an integer), as the JIT specialises them; the integer
    1 becomes the constexpr "constexpr". An integer the kernel does not
    specialise (``do_not_specialize``) is neither."""
    if isinstance(value, torch.Tensor):
        return "*" + TYPES[value.dtype], value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        kind = "i32" if -2**31 <= value < 2**31 else "i64"
        if not specialised:
            return kind, False
        if value == 1:
            return "constexpr", False
        return kind, value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"no Triton type for {type(value).__name__}")


def unspecialised(fn) -> set[str]:
    """The arguments ``fn`` (a JITFunction, or the interpreter's stand-in) does not specialise."""
    listed = fn.do_not_specialize if hasattr(fn, "params") else fn.kwargs.get("do_not_specialize") or ()
    return {fn.arg_names[i] if isinstance(i, int) else i for i in listed}


def argument_types(fn, args: tuple) -> list[tuple[str, bool]]:
    """:func:`specialise` of each positional argument of a launch of ``fn``."""
    plain = unspecialised(fn)
    return [specialise(value, name not in plain) for name, value in zip(fn.arg_names, args)]


def variant_name(launch: Launch, config: dict) -> str:
    """``"op.kernel KEY=value,... argument types"``, each type followed by ``/16`` where the JIT
    specialises it as 16-divisible: one compiled binary."""
    name = launch.name + " " + ",".join(f"{k}={v}" for k, v in sorted(config.items()))
    types = argument_types(base_function(launch.kernel), launch.args)
    return name + " " + ",".join(t + ("/16" if divisible else "") for t, divisible in types if t != "fp32")


def compile_launch(fn, args: tuple, kwargs: dict):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = dict(zip(fn.arg_names, args))
    values.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        signature[param.name], divisible = specialise(value, param.name not in unspecialised(fn))
        if signature[param.name] == "constexpr":
            constexprs[param.name] = value
        elif divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def blocks_per_sm(registers: int, shared: int, num_warps: int) -> int:
    """Resident blocks per SM, from the block's registers per thread, shared bytes and warps."""
    per_warp = -(-registers * 32 // 256) * 256
    limits = [SM90["blocks"], SM90["threads"] // (32 * num_warps), SM90["registers"] // (per_warp * num_warps)]
    if shared:
        limits.append(SM90["shared"] // (shared + SM90["shared_per_block_reserved"]))
    return min(limits)


def ptx_loops(ptx: str) -> int:
    """Loops in a kernel's PTX: branches back to a label above them."""
    seen, loops = set(), 0
    for line in ptx.splitlines():
        label = re.match(r"^(\$L__BB\d+_\d+):", line)
        if label:
            seen.add(label.group(1))
            continue
        branch = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        loops += bool(branch and branch.group(1) in seen)
    return loops


_JOBS: list[tuple] = []  # (name, JITFunction, args, config), read by the forked workers


def _compile_job(index: int) -> tuple[str, dict]:
    name, fn, args, config = _JOBS[index]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # Triton prints ptxas's -v log when asked
        compiled = compile_launch(fn, args, dict(config))
    ptx, text = compiled.asm["ptx"], log.getvalue()
    registers = max(int(r) for r in re.findall(r"Used (\d+) registers", text))
    shared = compiled.metadata.shared
    warps = config.get("num_warps", 4)
    return name, {"shared": shared, "registers": registers, "num_warps": warps,
                  "spill_bytes": sum(int(b) for b in re.findall(r"(\d+) bytes spill (?:stores|loads)", text)),
                  "blocks_per_sm": blocks_per_sm(registers, shared, warps),
                  "mma": "mma" in ptx, "fp64": ".f64" in ptx, "acq_rel": "acq_rel" in ptx,
                  "vector_loads": "ld.global.v" in ptx, "cross_lane": bool(re.search(r"\b(?:shfl|redux)\.sync", ptx)),
                  "rem": sorted(set(re.findall(r"\brem\.([su]\d+)", ptx))),
                  "loops": ptx_loops(ptx), "ptx": ptx}


def compile_variants(launches: list[Launch], processes: int | None = None) -> dict[str, dict]:
    """``{variant_name: stats}`` for every launch and every autotuning config it
    may run with (each distinct binary once): shared bytes, registers, spill
    bytes, warps, blocks per SM, whether the PTX has tensor-core ``mma``,
    fp64, ``acq_rel``, vector global-load or cross-lane (``shfl``, ``redux``) instructions, the
    types of its integer remainders, its loops, and the PTX itself."""
    from triton import knobs

    check_not_interpreted()
    jobs = {}
    for launch in launches:
        for config in launch.configs():
            name = variant_name(launch, config)
            jobs.setdefault(name, (name, base_function(launch.kernel), launch.args, config))
    _JOBS[:] = jobs.values()
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's log: registers and spills
    knobs.compilation.always_compile = True  # a cached binary would come without that log
    try:
        with multiprocessing.get_context("fork").Pool(processes or os.cpu_count()) as pool:
            return dict(pool.imap_unordered(_compile_job, range(len(_JOBS))))
    finally:
        _JOBS.clear()
