"""The pure-PyTorch selective scan against the sequential recurrence (outputs and gradients), and the backend choice."""

from __future__ import annotations

import builtins
import sys

import pytest
import torch

from oddframe.models import selective_scan as ss


def _inputs(b: int = 2, d: int = 3, length: int = 37, n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, delta, z = r(b, d, length), 0.5 * r(b, d, length), r(b, d, length)
    A = -torch.exp(r(d, n))  # negative, as Mamba's -exp(A_log)
    B, C, D, bias = r(b, n, length), r(b, n, length), r(d), 0.1 * r(d)
    return [u, delta, A, B, C, D, z, bias]


@pytest.mark.parametrize("length", [1, 5, 16, 17, 37, 150])
@pytest.mark.parametrize("chunk", [2, 4, 16])
def test_scan_matches_sequential_reference_outputs_and_gradients(length: int, chunk: int) -> None:
    ref_in = [t.requires_grad_() for t in _inputs(length=length)]
    fast_in = [t.detach().float().requires_grad_() for t in ref_in]
    u, delta, A, B, C, D, z, bias = ref_in
    y_ref = ss.selective_scan_reference(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True)
    u, delta, A, B, C, D, z, bias = fast_in
    y = ss.selective_scan(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True, backend="torch", chunk=chunk)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), ref_in)
    grads = torch.autograd.grad((y * g.float()).sum(), fast_in)
    for name, got, want in zip("u delta A B C D z delta_bias".split(), grads, grads_ref):
        scale = want.abs().max().clamp_min(1.0)
        assert (got.double() - want).abs().max() / scale < 1e-5, name


def test_reference_is_the_recurrence_by_hand() -> None:
    """One channel, one state, three steps: h = a h + dt b u, y = c h (+ D u) by hand."""
    u = torch.tensor([[[1.0, 2.0, -1.0]]])
    delta = torch.tensor([[[0.5, 1.0, 2.0]]])
    A = torch.tensor([[-1.0]])
    B = torch.tensor([[[1.0, 0.5, 2.0]]])
    C = torch.tensor([[[2.0, 1.0, -1.0]]])
    h, want = 0.0, []
    for t in range(3):
        h = torch.exp(delta[0, 0, t] * A[0, 0]) * h + delta[0, 0, t] * B[0, 0, t] * u[0, 0, t]
        want.append(C[0, 0, t] * h + 0.5 * u[0, 0, t])
    D = torch.tensor([0.5])
    for fn in (ss.selective_scan_reference, lambda *a: ss.selective_scan(*a, backend="torch", chunk=2)):
        torch.testing.assert_close(fn(u, delta, A, B, C, D)[0, 0], torch.stack(want))


@pytest.mark.parametrize("length", [3, 33, 100])
def test_linear_scan_reverse_is_the_flipped_forward_scan(length: int) -> None:
    g = torch.Generator().manual_seed(0)
    a, x = torch.rand(length, 2, 3, generator=g), torch.randn(length, 2, 3, generator=g)
    fwd = ss.linear_scan(a, x, chunk=4)
    seq = torch.zeros(2, 3)
    for t in range(length):
        seq = a[t] * seq + x[t]
        torch.testing.assert_close(fwd[t], seq)
    torch.testing.assert_close(ss.linear_scan(a, x, reverse=True, chunk=4), ss.linear_scan(a.flip(0), x.flip(0)).flip(0))


def test_scan_is_stable_for_strong_decay() -> None:
    """Decays of exp(-50) per step over 64 steps would overflow an exp(-cumsum) scan; the chunked one is exact."""
    u, delta, A, B, C, *_ = _inputs(length=64)
    delta = torch.full_like(delta, 50.0)
    y = ss.selective_scan(u.float(), delta.float(), A.float(), B.float(), C.float(), backend="torch", chunk=32)
    assert torch.isfinite(y).all()
    # With h_{t-1} decayed to ~0, y_t = C_t . (delta B_t u_t).
    want = torch.einsum("bnl,bnl->bl", C, B)[:, None] * 50.0 * u
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)


def test_bf16_inputs_are_scanned_in_float32() -> None:
    u, delta, A, B, C, D, z, bias = (t.float() for t in _inputs(length=40))
    y32 = ss.selective_scan(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True, backend="torch")
    y16 = ss.selective_scan(
        u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, z.bfloat16(), delta_bias=bias,
        delta_softplus=True, backend="torch",
    )
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - y32).abs().max() < 0.05 * y32.abs().max()


def test_bad_shapes_and_chunks_are_errors() -> None:
    u, delta, A, B, C, *_ = (t.float() for t in _inputs())
    with pytest.raises(ValueError, match=r"B and C must be \(B, N, L\)"):
        ss.selective_scan(u, delta, A, B[:, :2], C)
    with pytest.raises(ValueError, match="chunk must be >= 2"):
        ss.linear_scan(torch.ones(4, 1), torch.ones(4, 1), chunk=1)


# ------------------------------------------------------------------------------------------ backend choice
@pytest.fixture
def fake_fused(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pretend mamba_ssm imports: its kernel records each call."""
    calls: list[str] = []

    def kernel(*args, **kwargs):
        calls.append("fused")
        return ss.selective_scan_reference(*args, **kwargs)

    monkeypatch.setattr(ss, "fused_scan_fn", lambda: kernel)
    return calls


def test_auto_uses_the_torch_scan_on_cpu_even_when_mamba_ssm_imports(fake_fused: list[str]) -> None:
    assert ss.resolve_backend("auto", "cpu") == "torch"
    assert ss.resolve_backend("auto", "cuda") == "fused"  # the choice only; nothing runs on CUDA here
    u, delta, A, B, C, *_ = (t.float() for t in _inputs(length=8))
    ss.selective_scan(u, delta, A, B, C)
    assert fake_fused == []
    with pytest.raises(RuntimeError, match="not CUDA"):
        ss.resolve_backend("fused", "cpu")


def test_auto_falls_back_when_mamba_ssm_is_absent_or_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("mamba_ssm"):
            raise OSError("libcudart.so.12: cannot open shared object file")  # a wheel for another CUDA
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "mamba_ssm", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    ss.fused_scan_fn.cache_clear()
    try:
        assert ss.fused_scan_fn() is None
        assert ss.resolve_backend("auto", "cuda") == "torch"
        with pytest.raises(RuntimeError, match="pip install mamba-ssm"):
            ss.resolve_backend("fused", "cuda")
    finally:
        ss.fused_scan_fn.cache_clear()
    with pytest.raises(ValueError, match="allowed: auto, torch, fused"):
        ss.resolve_backend("cuda", "cpu")
