"""Choosing between implementations by timing them on the device."""

import pytest

pytest.importorskip("triton")


def test_pick_faster_times_once_per_key_and_keeps_the_winner(monkeypatch):
    import triton.testing

    from sacd_fast.kernels import launch

    timings = {"fused": 2.0, "cudnn": 1.0}
    calls = []

    def fake_do_bench(fn, **budget):
        name = fn()
        calls.append("timed " + name)
        return timings[name]

    def candidate(name):
        return lambda: calls.append(name) or name

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(launch, "_FASTER", {})
    candidates = {"fused": candidate("fused"), "cudnn": candidate("cudnn")}
    assert launch.pick_faster(("a",), candidates) == "cudnn"
    timings["fused"] = 0.5  # remembered: no second measurement for the same key
    assert launch.pick_faster(("a",), candidates) == "cudnn"
    assert launch.pick_faster(("b",), candidates) == "fused"
    once = ["fused", "cudnn", "fused", "timed fused", "cudnn", "timed cudnn"]  # warm-up calls, then the timings
    assert calls == once + once
