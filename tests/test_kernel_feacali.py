"""Parity of the fused FeaCali kernels (conv3x3 -> InstanceNorm -> LeakyReLU)
with float64 references: the inference chain, its statistics, one block, and
the gradients of the training Function. KERNEL_DEVICE (the interpreter on a
CPU) runs small, odd shapes; CUDA adds the model's real shapes."""

import copy

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close, kernel_path, random_teacher_model, requires_cuda

from sacd_fast import kernels
from sacd_fast.kernels.feacali import reference

feacali = pytest.importorskip("sacd_fast.kernels.feacali.triton")


def chain(channels, batch, h, w, device=KERNEL_DEVICE):
    """Input and per-block (weight, bias) of a FeaCali stack C -> C/2 -> ... -> C."""
    x = torch.randn(batch, channels[0], h, w, device=device)
    blocks = [(torch.randn(b, a, 3, 3, device=device) / (3 * a**0.5), torch.randn(b, device=device))
              for a, b in zip(channels, channels[1:])]
    return x, blocks


def reference_chain(x, blocks, norm_last=True):
    return reference.conv_in_lrelu_stack(x.double(), [w.double() for w, _ in blocks], [b.double() for _, b in blocks],
                                         norm_last=norm_last)


@pytest.mark.parametrize("channels,batch,h,w", [
    ((4, 2, 4), 1, 5, 3),
    ((12, 6, 3, 6, 12), 2, 7, 9),
    ((20, 10, 5, 10, 20), 1, 11, 6),
    ((40, 20, 40), 2, 4, 4),
    ((6, 3), 2, 1, 2),  # two pixels: the smallest map InstanceNorm takes
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_chain_matches_float64(channels, batch, h, w, channels_last, poison_outputs):
    x, blocks = chain(channels, batch, h, w)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = feacali.conv_in_lrelu_stack_triton(x, [wt for wt, _ in blocks])
    assert out.shape == (batch, channels[-1], h, w) and out.dtype == torch.float32
    assert_close(out, reference_chain(x, blocks), "feacali")


@pytest.mark.parametrize("channels,batch,h,w", [((4, 2, 4), 1, 5, 3), ((12, 6, 3, 6, 12), 2, 7, 9), ((6, 3), 2, 1, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_chain_with_a_last_block_without_norm_matches_float64(channels, batch, h, w, channels_last,
                                                                    poison_outputs):
    """The last block's bias and LeakyReLU in its convolution's epilogue: its output keeps each channel's level."""
    x, blocks = chain(channels, batch, h, w)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = feacali.conv_in_lrelu_stack_triton(x, [wt for wt, _ in blocks], last_bias=blocks[-1][1], norm_last=False)
    expected = reference_chain(x, blocks, norm_last=False)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert_close(out, expected, "feacali")
    assert expected.mean((2, 3)).abs().max() > 0.1  # not normalised away


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_statistics_are_those_of_the_stored_values(dtype, poison_outputs):
    """A channel whose stored values are all equal normalises to exactly 0,
    even where the fp32 accumulator held values that rounded to that constant."""
    x = torch.ones(2, 4, 9, 7, device=KERNEL_DEVICE, dtype=dtype)
    weight = torch.randn(3, 4, 3, 3, device=KERNEL_DEVICE)
    weight[0] = 0.3 + 1e-4 * torch.randn(4, 3, 3)  # channel 0: constant after rounding in the interior
    weight[0, :, 0] = weight[0, :, 2] = 0.0
    weight[0, :, :, 0] = weight[0, :, :, 2] = 0.0  # only the centre tap: the same value at every pixel
    out = feacali.conv_in_lrelu_stack_triton(x, [weight])
    assert torch.equal(out[:, 0].float(), torch.zeros_like(out[:, 0].float()))


def test_statistics_are_stable_and_bit_deterministic(poison_outputs):
    """A large common offset (mean >> std) breaks E[y^2] - mean^2 in fp32; the
    combined per-tile deviations keep the normalised output exact, over several
    pixel tiles, and two runs agree bit for bit."""
    x = torch.randn(2, 8, 11, 10, device=KERNEL_DEVICE) + 300.0  # 110 pixels: four 32-pixel tiles
    weight = torch.randn(4, 8, 3, 3, device=KERNEL_DEVICE) / 24
    first = feacali.conv_in_lrelu_stack_triton(x, [weight])
    assert torch.equal(first, feacali.conv_in_lrelu_stack_triton(x, [weight]))
    if KERNEL_DEVICE.type == "cpu":  # exact fp32 products; CUDA's TF32 products lose the offset's digits themselves
        assert_close(first, reference.conv_in_lrelu(x.double(), weight.double()), "feacali")


def test_packed_weights_are_reused_and_remade_when_the_weights_change(poison_outputs):
    """The (tap, C_in, C_out) copy is made once per weight; an in-place update
    (version counter) or new data under the same tensor (``.data =``) makes it
    again, and the chain follows the new weights."""
    x, blocks = chain((12, 6, 12), 2, 5, 6)
    weights = [torch.nn.Parameter(wt) for wt, _ in blocks]
    first = feacali.packed_weight(weights[0], x.dtype)
    assert feacali.packed_weight(weights[0], x.dtype) is first
    assert torch.equal(first, weights[0].detach().permute(2, 3, 1, 0))
    feacali.conv_in_lrelu_stack_triton(x, weights)
    with torch.no_grad():
        weights[0].mul_(-2.0)
    assert_close(feacali.conv_in_lrelu_stack_triton(x, weights),
                 reference_chain(x, [(w.detach(), b) for w, (_, b) in zip(weights, blocks)]), "feacali")
    weights[1].data = torch.randn_like(weights[1]) / 9
    assert_close(feacali.conv_in_lrelu_stack_triton(x, weights),
                 reference_chain(x, [(w.detach(), b) for w, (_, b) in zip(weights, blocks)]), "feacali")
    assert feacali.packed_weight(weights[0], torch.float16).dtype == torch.float16  # another dtype: another copy
    held = len(feacali._PACKED)
    del weights
    assert len(feacali._PACKED) == held - 2  # the copies go with their weights


def recorded_counters(monkeypatch) -> list[torch.Tensor]:
    """Every arrival-counter buffer the convolutions receive, in launch order."""
    seen, real = [], feacali._conv_stats

    def conv_stats(x, weight, in_stats, partials, arrivals, *args):
        seen.append(arrivals)
        return real(x, weight, in_stats, partials, arrivals, *args)

    monkeypatch.setattr(feacali, "_conv_stats", conv_stats)
    return seen


def test_arrival_counters_are_zero_after_every_launch(poison_outputs, monkeypatch):
    """The convolution's last program per (sample, channel block) resets its
    counter, so one zeroed buffer serves every block of a chain."""
    x, blocks = chain((40, 20, 40), 3, 9, 8)  # 72 pixels: three 32-pixel tiles per (sample, channel block)
    weights = [wt for wt, _ in blocks]
    seen = recorded_counters(monkeypatch)
    first = feacali.conv_in_lrelu_stack_triton(x, weights)
    assert len(seen) == 2 and seen[0] is seen[1] and not seen[0].any()
    assert torch.equal(feacali.conv_in_lrelu_stack_triton(x, weights), first)
    assert not seen[2].any()


def test_two_chains_on_two_streams_never_share_counters(monkeypatch):
    """A server scoring two lines at once runs two chains whose launches interleave (two streams or
    threads): each chain call has counters of its own, so neither can see the other's arrivals. The
    launches are recorded (not run) from two threads that alternate block by block."""
    import threading

    from sacd_fast.kernels import recorder

    turns = threading.Barrier(2)
    real = feacali._conv_stats

    def alternating(*args):
        turns.wait(timeout=60)  # both chains launch block k before either launches block k + 1
        return real(*args)

    monkeypatch.setattr(feacali, "_conv_stats", alternating)
    inputs = [chain((12, 6, 3, 6, 12), 2, 6, 5) for _ in range(2)]
    with recorder.recording() as launches:
        threads = [threading.Thread(target=feacali.conv_in_lrelu_stack_triton, args=(x, [w for w, _ in blocks]))
                   for x, blocks in inputs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    convs = [launch for launch in launches if launch.name == "feacali._conv3x3_stats_kernel"]
    counters = [launch.args[6] for launch in convs]  # count_ptr
    inputs_of = [launch.args[0].data_ptr() for launch in convs]
    assert len(convs) == 8 and len({inputs_of[0], inputs_of[1]}) == 2  # interleaved: A1 B1 A2 B2 ... in some order
    by_chain = {}
    for launch, buffer in zip(convs, counters):
        by_chain.setdefault(id(launch.args[5]), set()).add(buffer.data_ptr())  # chains told apart by their partials
    assert len(by_chain) == 2 and all(len(ptrs) == 1 for ptrs in by_chain.values())
    assert set.isdisjoint(*by_chain.values())
    assert all(not buffer.any() for buffer in counters)  # zeroed for each chain (recorded: nothing ran)


def test_a_capture_never_adds_to_the_packed_weights_and_prepared_ones_serve_it(monkeypatch, poison_outputs):
    """While a CUDA graph is captured (simulated here), memory belongs to the graph's pool: a missing
    packed copy is made for the call only, never cached. Prepared before, the cached copies serve the
    capture, so nothing is allocated for them in the pool."""
    x, blocks = chain((12, 6, 12), 2, 5, 6)
    weights = [torch.nn.Parameter(wt) for wt, _ in blocks]
    expected = reference_chain(x, blocks)
    held = len(feacali._PACKED)
    monkeypatch.setattr(feacali, "capturing", lambda device: True)
    assert_close(feacali.conv_in_lrelu_stack_triton(x, weights), expected, "feacali")
    assert len(feacali._PACKED) == held
    monkeypatch.setattr(feacali, "capturing", lambda device: False)
    kernels.prepare_conv_in_lrelu_stack(weights, x.dtype)
    prepared = [feacali.packed_weight(w, x.dtype) for w in weights]
    assert len(feacali._PACKED) == held + 2
    monkeypatch.setattr(feacali, "capturing", lambda device: True)
    assert [feacali.packed_weight(w, x.dtype) for w in weights] == prepared  # the same tensors: nothing new
    assert_close(feacali.conv_in_lrelu_stack_triton(x, weights), expected, "feacali")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_the_gpu_dot_path_matches_float64(dtype, monkeypatch, poison_outputs):
    """The convolution's GPU path (operands in the input's dtype straight into tl.dot) run under the
    interpreter, where its fp16 and fp32 dots are right (its bf16 one is not: the emulating path,
    bf16 rounding with exact products, covers bf16)."""
    monkeypatch.setattr(feacali, "DOT_FP32", False)
    x, blocks = chain((12, 6, 3, 6, 12), 2, 7, 9)
    out = feacali.conv_in_lrelu_stack_triton(x.to(dtype), [wt for wt, _ in blocks])
    assert out.dtype == dtype
    assert_close(out, reference_chain(x.to(dtype), blocks), "feacali")


def test_fp32_products_follow_pytorchs_tf32_setting(monkeypatch):
    """fp32 operands multiply in TF32 only where PyTorch allows it for convolutions."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert feacali.dot_precision(torch.float32) == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert feacali.dot_precision(torch.float32) == "ieee"
    assert feacali.dot_precision(torch.bfloat16) == "tf32"  # low-precision operands: the tensor cores' own
    x, blocks = chain((12, 6, 12), 2, 5, 6)
    from sacd_fast.kernels import recorder

    with recorder.recording() as launches:
        feacali.conv_in_lrelu_stack_triton(x, [w for w, _ in blocks])
    assert {launch.kwargs["DOT_PRECISION"] for launch in launches if "DOT_PRECISION" in launch.kwargs} == {"ieee"}


@pytest.mark.parametrize("choice", ["fused", "cudnn"])
def test_sacd_feacali_fixes_the_chain(choice, monkeypatch):
    """SACD_FEACALI=fused|cudnn takes the place of the per-shape timing: the same choice in every process."""
    monkeypatch.setenv("SACD_FEACALI", choice)
    x, blocks = chain((12, 6, 12), 2, 5, 6)
    ran, real = [], feacali.conv_in_lrelu_stack_triton
    monkeypatch.setattr(feacali, "conv_in_lrelu_stack_triton", lambda *a, **k: ran.append("fused") or real(*a, **k))
    monkeypatch.setattr(feacali, "pick_faster", lambda *a: pytest.fail("timed despite SACD_FEACALI"))
    out = feacali.fastest_stack(x, [w for w, _ in blocks])
    assert ran == (["fused"] if choice == "fused" else [])
    assert_close(out, reference_chain(x, blocks), "feacali")
    monkeypatch.setenv("SACD_FEACALI", "fastest")
    with pytest.raises(ValueError, match="SACD_FEACALI"):
        feacali.fastest_stack(x, [w for w, _ in blocks])


def test_one_block_and_the_dispatched_stack():
    x, blocks = chain((12, 6, 3, 6, 12), 2, 6, 5)
    with torch.no_grad(), kernel_path(triton=True):
        one = kernels.conv_in_lrelu(x, *blocks[0])
        stacked = kernels.conv_in_lrelu_stack(x, [b[0] for b in blocks], [b[1] for b in blocks])
        plain_last = kernels.conv_in_lrelu_stack(x, [b[0] for b in blocks], [b[1] for b in blocks], norm_last=False)
    assert_close(one, reference_chain(x, blocks[:1]), "feacali")
    assert_close(stacked, reference_chain(x, blocks), "feacali")
    assert_close(plain_last, reference_chain(x, blocks, norm_last=False), "feacali")


@pytest.mark.parametrize("cin,cout,batch,h,w,layout", [(6, 3, 2, 5, 7, "contiguous"), (5, 10, 1, 9, 4, "channels_last"),
                                                       (4, 3, 2, 6, 1, "transposed")])
def test_training_function_gradients_match_float64(cin, cout, batch, h, w, layout):
    from conftest import with_layout

    x = with_layout(torch.randn(batch, cin, h, w, device=KERNEL_DEVICE), layout).requires_grad_()
    weight = (torch.randn(cout, cin, 3, 3, device=KERNEL_DEVICE) / (3 * cin**0.5)).requires_grad_()
    bias = torch.randn(cout, device=KERNEL_DEVICE, requires_grad=True)
    out = feacali.conv_in_lrelu_train(x, weight, bias)
    grad = with_layout(torch.randn(out.shape, device=KERNEL_DEVICE), layout)  # grad_out in the same odd layout
    (out * grad).sum().backward()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    out64 = reference.conv_in_lrelu(x64, w64, b64)
    (out64 * grad.double()).sum().backward()
    assert_close(out, out64, "feacali")
    assert_close(x.grad, x64.grad, "feacali_grad")
    assert_close(weight.grad, w64.grad, "feacali_grad")
    assert_close(bias.grad, b64.grad, "feacali_grad")  # zero: InstanceNorm removes it


def test_feacali_modules_train_and_predict_through_the_kernels(monkeypatch):
    """The model's FeaCali modules (their shapes and initial weights) through
    the Triton path: maps, L_intra and every parameter gradient against float64
    on fresh random student features; and the model's training and prediction
    reach those kernels.

    The features are drawn positive and spread out, as a trained student's are.
    A random model's own features hold near-constant channels: there
    InstanceNorm puts pixels within rounding of z = 0, where LeakyReLU's
    derivative jumps, so any fp32 implementation's gradient (PyTorch's too)
    depends on how its mean rounds; those cases are left to the block-level
    property tests, which hold the gradient to float64 on conditioned inputs."""
    from sacd_fast.network.loss import sacd_loss

    model = random_teacher_model("efficientnet_lite0", 32).to(KERNEL_DEVICE).eval()
    x = torch.randn(2, 3, 32, 32, device=KERNEL_DEVICE)
    with torch.no_grad():
        t, s = (list(f) for f in model.encode_decode(x))
    t, s, s_abnormal = ([torch.rand_like(v) for v in t], [torch.rand_like(v) for v in s],
                        [torch.rand_like(v) for v in s])

    def run(feacali, t, s, s_abnormal):
        feacali.zero_grad()
        intra = sacd_loss(t, s, [f(v) for f, v in zip(feacali, s_abnormal)], 0.2)["intra"]
        intra.backward()
        with torch.no_grad():
            maps = kernels.cosine_anomaly_map(t, [f(v) for f, v in zip(feacali, s)], (32, 32))
        return maps, intra.detach(), [p.grad for p in feacali.parameters()]

    with kernel_path(triton=True):
        maps, intra, grads = run(model.feacali, t, s, s_abnormal)
    exact = run(copy.deepcopy(model.feacali).double(), *[[v.double() for v in vs] for vs in (t, s, s_abnormal)])
    assert_close(maps, exact[0], "feacali")
    assert_close(intra, exact[1], "feacali")
    for ours, expected in zip(grads, exact[2], strict=True):
        assert_close(ours, expected, "feacali_grad", torch.float32)

    calls = []  # the dispatch, with the kernels stood in for by the reference (the interpreter is slow)
    monkeypatch.setattr(feacali, "conv_in_lrelu_train",
                        lambda *a: calls.append("conv_in_lrelu_train") or reference.conv_in_lrelu(*a))
    monkeypatch.setattr(feacali, "fastest_stack", lambda x, ws, eps, slope, bias, norm_last:
                        calls.append("fastest_stack") or reference_chain(
                            x, [(w, torch.zeros(w.shape[0])) for w in ws[:-1]] + [(ws[-1], bias)], norm_last).float())
    with kernel_path(triton=True):
        model.training_losses(x, x)["total"].backward()
        model.predict(x)
    # three scales: three normalised blocks each in training (the last one is conv + LeakyReLU), one chain at inference
    assert calls.count("conv_in_lrelu_train") == 9 and calls.count("fastest_stack") == 3


def test_training_function_under_bf16_autocast():
    """The Triton InstanceNorm + LeakyReLU backward under autocast: cuDNN-side
    convolution gradients come back in the parameters' dtypes."""
    x = torch.randn(2, 8, 6, 7, device=KERNEL_DEVICE, requires_grad=True)
    weight = (torch.randn(4, 8, 3, 3, device=KERNEL_DEVICE) / 8).requires_grad_()
    with torch.autocast(KERNEL_DEVICE.type, dtype=torch.bfloat16):
        out = feacali.conv_in_lrelu_train(x, weight)
    assert out.dtype == torch.bfloat16
    grad = torch.randn_like(out, dtype=torch.float32)
    (out.float() * grad).sum().backward()
    assert x.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    (reference.conv_in_lrelu(x64, w64) * grad.double()).sum().backward()
    assert_close(out, reference.conv_in_lrelu(x64, w64), "feacali", torch.bfloat16)
    assert_close(x.grad, x64.grad, "feacali_grad", torch.bfloat16)
    assert_close(weight.grad, w64.grad, "feacali_grad", torch.bfloat16)


REAL_SHAPES = [(256, 64), (512, 32), (1024, 16), (128, 64), (256, 32), (512, 16)]


@requires_cuda
@pytest.mark.parametrize("channels,size", REAL_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_chain_cuda_real_shapes(channels, size, dtype, poison_outputs):
    widths = (channels, channels // 2, channels // 4, channels // 2, channels)
    x, blocks = chain(widths, 4, size, size, device="cuda")
    x = x.to(dtype=dtype, memory_format=torch.channels_last)
    out = feacali.conv_in_lrelu_stack_triton(x, [wt for wt, _ in blocks])
    assert_close(out, reference_chain(x, blocks), "feacali", dtype)
    assert torch.equal(out, feacali.conv_in_lrelu_stack_triton(x, [wt for wt, _ in blocks]))  # bit-deterministic


@requires_cuda
@pytest.mark.parametrize("channels,size", REAL_SHAPES[:3])
def test_training_function_cuda(channels, size):
    x = torch.randn(4, channels, size, size, device="cuda", requires_grad=True)
    weight = (torch.randn(channels // 2, channels, 3, 3, device="cuda") / (3 * channels**0.5)).requires_grad_()
    out = feacali.conv_in_lrelu_train(x, weight)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    (reference.conv_in_lrelu(x64, w64) * grad.double()).sum().backward()
    assert_close(x.grad, x64.grad, "feacali_grad")
    assert_close(weight.grad, w64.grad, "feacali_grad")


@requires_cuda
def test_batch_64_at_the_widest_scale_launches_within_the_grid_limits():
    """64 x 1,024 channels was one grid axis past CUDA's 65,535 before the rows moved to axis 0."""
    x = torch.randn(64, 1024, 16, 16, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    weights = [torch.randn(512, 1024, 3, 3, device="cuda") / 96, torch.randn(1024, 512, 3, 3, device="cuda") / 68]
    out = feacali.conv_in_lrelu_stack_triton(x, weights)
    assert torch.isfinite(out).all()
