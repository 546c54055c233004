"""Fused elementwise layers for CUDA (Triton): residual add + RMSNorm, RoPE, SiLU-and-multiply.

In eager torch each of these is a chain of kernels over the whole activation, in float32; at a
2k-token prefill that traffic costs as much as the attention. One pass each here, with the same
rounding points as the reference (normalise in float32, round to the model dtype, then scale).
Imported only on CUDA machines.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(X, R, W, Y, ROut, stride_x, stride_r, stride_y, stride_ro, n_cols, eps,
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        x = x.to(Y.dtype.element_ty)  # the residual stream is kept in the model dtype
        tl.store(ROut + row * stride_ro + cols, x, mask=mask)
        x = x.to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    normed = (x * tl.rsqrt(var + eps)).to(Y.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (normed * w).to(Y.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of x (+ residual, when given). Returns (normed, x + residual or None)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    rows, n = x2.shape
    y = torch.empty_like(x2)
    r_out = torch.empty_like(x2) if residual is not None else y
    r2 = residual.reshape(-1, n) if residual is not None else x2
    if rows:
        block = triton.next_power_of_2(n)
        _add_rms_norm_kernel[(rows,)](x2, r2, weight, y, r_out, x2.stride(0), r2.stride(0), y.stride(0),
                                      r_out.stride(0), n, eps, HAS_RESIDUAL=residual is not None, BLOCK=block,
                                      num_warps=min(16, max(1, block // 256)))
    return y.view(shape), (r_out.view(shape) if residual is not None else None)


@triton.jit
def _rotate_heads(base, stride_h, heads, cos, sin, HALF: tl.constexpr, HEADS_PAD: tl.constexpr):
    h = tl.arange(0, HEADS_PAD)[:, None]
    i = tl.arange(0, HALF)[None, :]
    mask = h < heads
    ptr = base + h * stride_h + i
    x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptr, (x1 * cos - x2 * sin).to(base.dtype.element_ty), mask=mask)
    tl.store(ptr + HALF, (x2 * cos + x1 * sin).to(base.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(Q, K, Cos, Sin, stride_qt, stride_qh, stride_kt, stride_kh, num_q, num_k,
                 HALF: tl.constexpr, HEADS_PAD: tl.constexpr):
    t = tl.program_id(0)
    cos = tl.load(Cos + t * HALF + tl.arange(0, HALF))[None, :]
    sin = tl.load(Sin + t * HALF + tl.arange(0, HALF))[None, :]
    _rotate_heads(Q + t * stride_qt, stride_qh, num_q, cos, sin, HALF, HEADS_PAD)
    _rotate_heads(K + t * stride_kt, stride_kh, num_k, cos, sin, HALF, HEADS_PAD)


def apply_rope_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place (half-split layout; any row strides) by the
    float32 angles' cos/sin [T, D/2], which torch computes accurately for large positions."""
    t, hq, d = q.shape
    hk = k.shape[1]
    assert q.stride(2) == 1 and k.stride(2) == 1 and d % 2 == 0
    assert cos.is_contiguous() and sin.is_contiguous() and cos.dtype == torch.float32
    if t:
        _rope_kernel[(t,)](q, k, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                           hq, hk, HALF=d // 2, HEADS_PAD=triton.next_power_of_2(max(hq, hk)), num_warps=4)


@triton.jit
def _silu_mul_kernel(GU, Out, stride_gu, stride_o, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(GU + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(GU + row * stride_gu + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(Out.dtype.element_ty).to(tl.float32)
    tl.store(Out + row * stride_o + cols, (act * up).to(Out.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] along the last dim."""
    rows, two_n = gate_up.shape
    n = two_n // 2
    out = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    if rows:
        _silu_mul_kernel[(rows, triton.cdiv(n, block))](gate_up, out, gate_up.stride(0), out.stride(0), n,
                                                         BLOCK=block, num_warps=4)
    return out
