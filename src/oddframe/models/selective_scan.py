"""Mamba's selective scan (Gu & Dao 2023, Algorithm 2) in pure PyTorch, with the fused CUDA kernel where it imports.

The recurrence, per batch element ``b``, channel ``d`` and state index ``n``:

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t          (zero-order-hold discretisation, eq. 4)
    y_t = C_t . h_t + D u_t,   then y_t * silu(z_t)          (the gate of the Mamba block)

:func:`selective_scan_reference` is that recurrence as a plain loop over the sequence (the test oracle, as
``selective_scan_ref`` in ``mamba_ssm``). :func:`selective_scan` computes the same numbers fast:

- ``"torch"``: a chunked scan of the linear recurrence ``h_t = a_t h_{t-1} + x_t``: the sequence is cut into
  chunks of ``chunk`` steps, each chunk is scanned step by step *in parallel over all chunks*, the chunk summaries
  (total decay and end state) are scanned the same way recursively, and the carried state is added back. The
  Python loop runs ``chunk`` steps per level and ``log_chunk(L)`` levels (about 50 steps for ``L = 7680``), never
  ``L``; the work stays ``O(L)`` and every factor multiplies decays in ``[0, 1]``, so it is as stable as the plain
  loop (no ``exp(-cumsum)`` that overflows). A custom autograd function saves only the inputs and recomputes the
  states in the backward pass (like the fused kernel), whose adjoint is the same scan run backwards in time.
- ``"fused"``: ``mamba_ssm``'s CUDA kernel (``selective_scan_fn``), used only where it imports and the tensors
  are on a CUDA device. ``"auto"`` picks it then, else ``"torch"``.

Shapes follow ``mamba_ssm``: ``u``, ``delta``, ``z`` ``(B, D, L)``; ``A`` ``(D, N)``; ``B``, ``C`` ``(B, N, L)``
(input-dependent, "selective"); ``D`` and ``delta_bias`` ``(D,)``. The torch path computes in float32 whatever the
input dtype (under bf16 autocast too) and returns the input dtype.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F

#: Scan implementations accepted by :func:`selective_scan`.
SCAN_BACKENDS: tuple[str, ...] = ("auto", "torch", "fused")
#: Steps per chunk of the torch scan (8 to 64 were within measurement noise on CPU for L = 1e3-1e4).
DEFAULT_CHUNK = 16


# --------------------------------------------------------------------------------------------- linear scan
def linear_scan(a: torch.Tensor, x: torch.Tensor, *, reverse: bool = False, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """All states of ``h_t = a_t h_{t-1} + x_t`` (``h_{-1} = 0``) along dim 0, by the chunked scan.

    Time is the first axis so that each step of the loop reads and writes contiguous rows (``(L, ...)``; measured
    3x faster on CPU than scanning a middle axis). With ``reverse=True`` the recurrence runs backwards in time:
    ``h_t = a_t h_{t+1} + x_t`` (``h_L = 0``).

    Args:
        a: ``(L, ...)`` decays (``exp(delta A)`` in ``[0, 1]`` for Mamba; any real values work).
        x: ``(L, ...)`` inputs, same shape.
        reverse: scan from the end.
        chunk: steps per chunk (>= 2).

    Returns:
        ``(L, ...)`` states, a new contiguous tensor.
    """
    if chunk < 2:
        raise ValueError(f"chunk must be >= 2, got {chunk}")
    shape = x.shape
    length = shape[0]
    a2, x2 = a.reshape(length, -1), x.reshape(length, -1)
    if length <= chunk:
        return _sequential(a2, x2, reverse).reshape(shape)
    nc = -(-length // chunk)
    pad = nc * chunk - length
    if pad:
        # Steps after the end (before the start when reversed) with a = 1, x = 0 leave the real states alone.
        where = (0, 0, 0, pad) if not reverse else (0, 0, pad, 0)
        a2 = F.pad(a2, where, value=1.0)
        x2 = F.pad(x2, where, value=0.0)
    a3 = a2.reshape(nc, chunk, -1)
    x3 = x2.reshape(nc, chunk, -1)
    h = torch.empty_like(x3)
    decay = torch.empty_like(a3)  # product of a from the chunk's entry point to each step
    steps = list(range(chunk - 1, -1, -1)) if reverse else list(range(chunk))
    h[:, steps[0]] = x3[:, steps[0]]
    decay[:, steps[0]] = a3[:, steps[0]]
    for prev, k in zip(steps, steps[1:]):  # every chunk at once: `chunk` Python steps, not L
        torch.addcmul(x3[:, k], a3[:, k], h[:, prev], out=h[:, k])
        torch.mul(a3[:, k], decay[:, prev], out=decay[:, k])
    last = steps[-1]
    # Chunk summaries: entering chunk c with state s leaves it with decay_last * s + h_last. Scanning them
    # (recursively) gives the state leaving every chunk; shifted by one chunk, the state entering each chunk.
    ends = linear_scan(decay[:, last], h[:, last], reverse=reverse, chunk=chunk)  # (nc, M)
    carry = torch.zeros_like(ends)
    if reverse:
        carry[:-1] = ends[1:]
    else:
        carry[1:] = ends[:-1]
    h.addcmul_(decay, carry[:, None])
    h = h.reshape(nc * chunk, -1)
    if pad:
        h = h[pad:] if reverse else h[:length]
    return h.reshape(shape)


def _sequential(a: torch.Tensor, x: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The plain loop over dim 0 of ``(L, M)`` tensors (short sequences and the innermost level)."""
    h = torch.empty_like(x)
    steps = list(range(x.shape[0] - 1, -1, -1)) if reverse else list(range(x.shape[0]))
    h[steps[0]] = x[steps[0]]
    for prev, t in zip(steps, steps[1:]):
        torch.addcmul(x[t], a[t], h[prev], out=h[t])
    return h


def _time_major(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """``(B, K, L)`` -> contiguous ``(L, B, K)``."""
    return [t.permute(2, 0, 1).contiguous() for t in tensors]


def _outer(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(L, B, D)``, ``(L, B, N)`` -> ``(L, B, D, N)`` ``p_d q_n`` (one broadcast write; a batched matmul of
    ``L B`` tiny matrices is up to 3x slower on CPU)."""
    return p[..., None] * q[:, :, None, :]


def _contract(s: torch.Tensor, q: torch.Tensor, over: str) -> torch.Tensor:
    """Contract states ``(L, B, D, N)`` with ``q`` per step: ``over="n"``: ``q`` ``(L, B, N)`` -> ``(L, B, D)``;
    ``over="d"``: ``q`` ``(L, B, D)`` -> ``(L, B, N)``. Batched matmuls over ``L B``: 5x faster than einsum on CPU."""
    length, b, d, n = s.shape
    s3 = s.view(length * b, d, n)
    if over == "n":
        return torch.bmm(s3, q.reshape(length * b, n, 1)).view(length, b, d)
    return torch.bmm(s3.transpose(1, 2), q.reshape(length * b, d, 1)).view(length, b, n)


def _decays(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``a = exp(delta A)`` ``(L, B, D, N)`` from ``delta`` ``(L, B, D)`` and ``A`` ``(D, N)`` (eq. 4, ZOH)."""
    return torch.exp_(dt[..., None] * A)


class _SSMScan(torch.autograd.Function):
    """``y_t = C_t . h_t`` with ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``(B, D, L)``, float32.

    States are ``(L, B, D, N)`` (time-major, see :func:`linear_scan`). Backward (the adjoint of a linear
    recurrence is the same recurrence backwards in time): with ``g_t = dL/dh_t`` through ``y_t`` only,
    ``lam_t = g_t + a_{t+1} lam_{t+1}`` is the total gradient of ``h_t``; then ``dx_t = lam_t`` for
    ``x_t = delta_t B_t u_t`` and ``da_t = lam_t h_{t-1}`` for ``a_t = exp(delta_t A)``. Only the inputs are
    saved; the states are recomputed (as the fused kernel does), so memory does not hold ``L B D N`` per layer.
    """

    @staticmethod
    def forward(ctx: Any, u, delta, A, B, C, chunk: int):  # type: ignore[override]
        ut, dt, bt, ct = _time_major(u, delta, B, C)  # (L, B, D) x2, (L, B, N) x2
        h = linear_scan(_decays(dt, A), _outer(dt * ut, bt), chunk=chunk)
        ctx.save_for_backward(u, delta, A, B, C)
        ctx.chunk = chunk
        return _contract(h, ct, "n").permute(1, 2, 0)

    @staticmethod
    def backward(ctx: Any, dy):  # type: ignore[override]
        u, delta, A, B, C = ctx.saved_tensors
        ut, dt, bt, ct, gt = _time_major(u, delta, B, C, dy)
        a = _decays(dt, A)
        dtu = dt * ut
        h = linear_scan(a, _outer(dtu, bt), chunk=ctx.chunk)
        dC = _contract(h, gt, "d")
        # lam_t = g_t + a_{t+1} lam_{t+1}: the reverse scan with the decays shifted by one step.
        a_next = torch.empty_like(a)
        a_next[:-1] = a[1:]
        a_next[-1] = 1.0
        lam = linear_scan(a_next, _outer(gt, ct), reverse=True, chunk=ctx.chunk)
        del a_next
        d_dtu = _contract(lam, bt, "n")  # d/d(delta u) of x = delta u B
        dB = _contract(lam, dtu, "d")
        # d/d(delta A) of a_t h_{t-1} is lam_t h_{t-1} a_t, with h_{-1} = 0; built in h's storage.
        h[1:] = h[:-1].clone()
        h[0] = 0.0
        q = h.mul_(lam).mul_(a)
        del a, lam
        # dA[d, n] = sum over (l, b) of q * delta: a matmul batched over d (einsum copies q here: 9x slower).
        dA = torch.bmm(q.view(-1, *q.shape[2:]).permute(1, 2, 0), dt.view(-1, dt.shape[2]).t()[:, :, None])[..., 0]
        ddelta = (q.mul_(A)).sum(-1) + d_dtu * ut
        du = d_dtu * dt
        return du.permute(1, 2, 0), ddelta.permute(1, 2, 0), dA, dB.permute(1, 2, 0), dC.permute(1, 2, 0), None


# --------------------------------------------------------------------------------------------- public API
def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """The selective scan as the plain sequential recurrence (one Python step per token): the test oracle.

    Args: as :func:`selective_scan`.

    Returns:
        ``(B, D, L)`` in ``u``'s dtype.
    """
    dtype = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
    ys = []
    for t in range(u.shape[2]):
        dt = delta[:, :, t, None]  # (B, D, 1)
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + D.float()[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


@functools.lru_cache(maxsize=1)
def fused_scan_fn() -> Callable[..., torch.Tensor] | None:
    """``mamba_ssm``'s fused ``selective_scan_fn`` if it imports, else None (never raises).

    Any exception counts as "not available": a wheel built for another CUDA or torch raises ``OSError`` or
    ``RuntimeError`` rather than ``ImportError``, and a broken optional extra must not break the model.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 (see docstring)
        return None
    return selective_scan_fn


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The scan implementation to use: ``"torch"`` or ``"fused"``.

    ``"auto"`` gives ``"fused"`` only when ``mamba_ssm`` imports and ``device`` is CUDA, else ``"torch"``;
    ``"fused"`` demands it and raises ``RuntimeError`` (naming what to install) when it cannot run.
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; allowed: {', '.join(SCAN_BACKENDS)}")
    if backend == "torch":
        return "torch"
    cuda = torch.device(device).type == "cuda"
    available = fused_scan_fn() is not None
    if backend == "fused" and not (available and cuda):
        why = "mamba_ssm does not import" if not available else f"tensors are on {torch.device(device)}, not CUDA"
        raise RuntimeError(
            f"scan backend 'fused' cannot run: {why}; install the optional CUDA kernels with `pip install mamba-ssm` "
            "on a CUDA machine, or use scan='auto' / 'torch'"
        )
    return "fused" if available and cuda else "torch"


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    backend: str = "auto",
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Mamba's selective scan: ``y = (C . h + D u) * silu(z)`` over the sequence (see the module docstring).

    Args:
        u: ``(B, D, L)`` input.
        delta: ``(B, D, L)`` step sizes (before ``delta_bias`` and softplus).
        A: ``(D, N)`` state matrix (diagonal per channel; negative for a stable, decaying state).
        B: ``(B, N, L)`` input matrix per step.
        C: ``(B, N, L)`` output matrix per step.
        D: ``(D,)`` skip connection, or None.
        z: ``(B, D, L)`` gate, or None.
        delta_bias: ``(D,)`` added to ``delta`` before the softplus, or None.
        delta_softplus: apply softplus to ``delta`` (Mamba does).
        backend: one of :data:`SCAN_BACKENDS`.
        chunk: steps per chunk of the torch scan.

    Returns:
        ``(B, D, L)`` in ``u``'s dtype.
    """
    if u.ndim != 3 or delta.shape != u.shape or A.ndim != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(
            f"selective_scan expects u, delta (B, D, L) and A (D, N); got u {tuple(u.shape)}, "
            f"delta {tuple(delta.shape)}, A {tuple(A.shape)}"
        )
    want = (u.shape[0], A.shape[1], u.shape[2])
    if tuple(B.shape) != want or tuple(C.shape) != want:
        raise ValueError(f"B and C must be (B, N, L) = {want}, got {tuple(B.shape)} and {tuple(C.shape)}")
    if resolve_backend(backend, u.device) == "fused":
        fn = fused_scan_fn()
        assert fn is not None  # resolve_backend checked it
        return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    dtype = u.dtype
    with torch.autocast(device_type=u.device.type, enabled=False):
        u32, delta32 = u.float(), delta.float()
        if delta_bias is not None:
            delta32 = delta32 + delta_bias.float()[None, :, None]
        if delta_softplus:
            delta32 = F.softplus(delta32)
        y = _SSMScan.apply(u32.contiguous(), delta32.contiguous(), A.float(), B.float(), C.float(), chunk)
        if D is not None:
            y = y + D.float()[None, :, None] * u32
        if z is not None:
            y = y * F.silu(z.float())
    return y.to(dtype)
