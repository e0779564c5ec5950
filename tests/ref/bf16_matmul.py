#!/usr/bin/python3
"""PyTorch reference for a linear layer whose matrix products run in bfloat16
(tests/ref/README.md, bf16_matmul.py).

Written from tests/ref/README.md only, never from d2v's C code. The semantics
of torch.autocast('cpu', torch.bfloat16) on nn.Linear, with float32 results:
every operand of a matrix product is first rounded to bfloat16 with
round-to-nearest-even (torch's .to(torch.bfloat16)), the product of the
rounded values is computed in float64 (exact to ~1e-16, far below float32),
the bias is added in full precision and never rounded, and the result is
stored as float32. Written to bf16_matmul.safetensors next to this script
(every tensor F32):

  x [M, K], w [N, K], b [N], dout [M, N]   inputs (x row 3 x 1000, row 5 x 1e-3)
  out [M, N]   = bf16(x) @ bf16(w)^T + b
  din [M, K]   = bf16(dout) @ bf16(w)
  dw [N, K]    = bf16(dout)^T @ bf16(x)
  db [N]       = dout.sum(0), from the UNROUNDED dout
  round_in [n], round_out [n]   round_out = round_in.to(bfloat16).to(float32):
               ties (even and odd lower neighbour, both signs), values next to
               ties, FLT_MAX, subnormals, -0.0, +-inf, 1.0, random normals
               over 1e-30 .. 1e30; no NaN

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(torch's rounding against a bit-level round-to-nearest-even of the uint32
bits, the products against torch's own bf16 matmul, the rounding being
visible in the outputs, determinism, a read-back of the file) and exits
non-zero without writing when a check fails.
"""

import collections
import json
import math
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcommon as rc  # noqa: E402  (float64 default, one thread)
from refcommon import check  # noqa: E402

M, K, N = 37, 53, 29
SEED = 0
BIG_ROW, BIG = 3, 1000.0
SMALL_ROW, SMALL = 5, 1e-3

CFG = collections.OrderedDict([
    ("M", M), ("K", K), ("N", N), ("seed", SEED),
    ("description", "linear layer with bfloat16 (RNE) matmul operands, float64 products "
                    "of the rounded values, bias added unrounded, stored as float32; "
                    "x row 3 x 1000, row 5 x 1e-3; plus a bf16 RNE rounding table"),
])

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bf16_matmul.safetensors")
LIMIT = 40000


# ---------------------------------------------------------------------------
# bfloat16 rounding.

def bf16(t):
    """Round a float32 tensor to bfloat16 (torch, RNE) and back, as float64."""
    assert t.dtype == torch.float32
    return t.to(torch.bfloat16).to(torch.float64)


def f32_bits(v):
    return struct.unpack("<I", struct.pack("<f", v))[0]


def bits_f32(u):
    return struct.unpack("<f", struct.pack("<I", u))[0]


def rne_bits(u):
    """Bit-level round-to-nearest-even of float32 bits u to bfloat16, as float32
    bits: add 0x7FFF + (bit 16), keep the top 16 bits. Valid for every
    non-NaN float32 (the carry out of 0x7F7F.... gives 0x7F80, inf)."""
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF) << 16


def rne_np(a):
    """rne_bits on a float32 array with numpy, -> float32 array."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF) << 16
    return r.astype(np.uint32).view(np.float32)


# Deliberate entries of the table: (float32 bits, what it is). The bfloat16
# neighbours of a tie t = hi16:0x8000 are hi16 (lower) and hi16 + 1.
SPECIAL = [
    (0x3F800000, "1.0"),
    (0x3F808000, "tie above 1.0, lower 0x3F80 even: rounds down to 1.0"),
    (0x3F807FFF, "just below that tie: down"),
    (0x3F808001, "just above that tie: up to 0x3F81"),
    (0x3F818000, "tie, lower 0x3F81 odd: rounds up to 0x3F82"),
    (0x3F817FFF, "just below that tie: down to 0x3F81"),
    (0x3F818001, "just above that tie: up to 0x3F82"),
    (0xBF808000, "-(tie, lower even): down in magnitude to -1.0"),
    (0xBF807FFF, "-(just below it)"),
    (0xBF808001, "-(just above it)"),
    (0xBF818000, "-(tie, lower odd): up in magnitude to -0x3F82"),
    (0xBF817FFF, "-(just below it)"),
    (0xBF818001, "-(just above it)"),
    (0x40490FDB, "pi"),
    (0x41208000, "tie above 10.0, lower 0x4120 even"),
    (0x41218000, "tie, lower 0x4121 odd"),
    (0x3FFF8000, "tie, lower 0x3FFF odd: carries into the exponent, 2.0"),
    (0xBFFF8000, "-(the same): -2.0"),
    (0x3F7F8000, "tie below 1.0, lower 0x3F7F odd: up to 1.0"),
    (0x7F7FFFFF, "largest finite float32: rounds up to +inf"),
    (0xFF7FFFFF, "-(largest finite float32): -inf"),
    (0x7F7F7FFF, "just below the tie under FLT_MAX: largest finite bf16"),
    (0x7F7F8000, "tie, lower 0x7F7F odd: up to +inf"),
    (0x7F7F0000, "largest finite bfloat16, exact"),
    (0x7F7E8000, "tie, lower 0x7F7E even: down"),
    (0x00800000, "smallest normal float32"),
    (0x00000001, "smallest subnormal: rounds to +0"),
    (0x80000001, "-(smallest subnormal): rounds to -0"),
    (0x00008000, "subnormal tie, lower 0x0000 even: +0"),
    (0x00018000, "subnormal tie, lower 0x0001 odd: up to 0x0002"),
    (0x00008001, "just above the first subnormal tie: 0x0001"),
    (0x00017FFF, "just below the odd subnormal tie: 0x0001"),
    (0x80018000, "-(subnormal tie, lower odd)"),
    (0x00400000, "subnormal, exact in bf16"),
    (0x007FFFFF, "largest subnormal: up to the smallest normal"),
    (0x807FFFFF, "-(largest subnormal)"),
    (0x00000000, "+0.0"),
    (0x80000000, "-0.0"),
    (0x7F800000, "+inf"),
    (0xFF800000, "-inf"),
]
N_RANDOM = 50


# ---------------------------------------------------------------------------
# The fixture.

def inputs():
    torch.manual_seed(SEED)
    x = torch.randn(M, K, dtype=torch.float32)
    w = torch.randn(N, K, dtype=torch.float32)
    b = torch.randn(N, dtype=torch.float32)
    dout = torch.randn(M, N, dtype=torch.float32)
    x[BIG_ROW] *= BIG
    x[SMALL_ROW] *= SMALL
    # The random part of the rounding table, from the same stream: normals
    # times 10^e, e uniform in [-30, 30], rounded to float32.
    z = torch.randn(N_RANDOM, dtype=torch.float64)
    e = torch.rand(N_RANDOM, dtype=torch.float64) * 60 - 30
    rand = (z * torch.pow(10.0, e)).to(torch.float32)
    special = torch.tensor([bits_f32(u) for u, _ in SPECIAL], dtype=torch.float32)
    round_in = torch.cat([special, rand])
    return x, w, b, dout, round_in


def compute(x, w, b, dout):
    xr, wr, dr = bf16(x), bf16(w), bf16(dout)
    return {
        "out": xr @ wr.t() + b.to(torch.float64),
        "din": dr @ wr,
        "dw": dr.t() @ xr,
        "db": dout.to(torch.float64).sum(0),
    }


def build():
    x, w, b, dout, round_in = inputs()
    res = compute(x, w, b, dout)
    round_out = round_in.to(torch.bfloat16).to(torch.float32)
    tensors = {"x": x, "w": w, "b": b, "dout": dout,
               "round_in": round_in, "round_out": round_out}
    tensors.update(res)
    arrays = {n: rc.to32(t.to(torch.float32)) for n, t in tensors.items()}
    meta = {"config": json.dumps(CFG, separators=(",", ":"))}
    return rc.safetensors_bytes(arrays, meta), arrays, (x, w, b, dout, round_in, round_out, res)


# ---------------------------------------------------------------------------
# Checks.

def check_rounding(round_in, round_out):
    ins = rc.to32(round_in)
    outs = rc.to32(round_out)
    check(not np.isnan(ins).any() and not np.isnan(outs).any(),
          "rounding table: %d values (%d deliberate, %d random), no NaN"
          % (len(ins), len(SPECIAL), N_RANDOM))
    bad = []
    nfinite = 0
    for i, v in enumerate(ins.tolist()):
        u = f32_bits(v)
        if i < len(SPECIAL):
            assert u == SPECIAL[i][0], hex(u)  # the table holds the bits meant
        got = int(outs[i:i + 1].view(np.uint32)[0])
        want = rne_bits(u)
        nfinite += math.isfinite(v)
        if got != want:
            bad.append("%08x -> torch %08x, RNE %08x (%s)" % (u, got, want,
                       SPECIAL[i][1] if i < len(SPECIAL) else "random"))
    for s in bad:
        print("     " + s)
    check(not bad, "torch .to(bfloat16) equals the bit-level RNE (struct, uint32 bits) on all "
          "%d values (%d finite, 2 inf)" % (len(ins), nfinite))
    check(np.array_equal(rne_np(ins).view(np.uint32), outs.view(np.uint32)),
          "the same RNE with numpy on the whole table (bit-equal, -0.0 included)")

    def out_of(u):
        i = [s[0] for s in SPECIAL].index(u)
        return int(outs[i:i + 1].view(np.uint32)[0])
    cases = [(0x3F808000, 0x3F800000), (0x3F818000, 0x3F820000), (0xBF808000, 0xBF800000),
             (0xBF818000, 0xBF820000), (0x3F807FFF, 0x3F800000), (0x3F808001, 0x3F810000),
             (0x3FFF8000, 0x40000000), (0x7F7FFFFF, 0x7F800000), (0x7F7F8000, 0x7F800000),
             (0x7F7F7FFF, 0x7F7F0000), (0x00000001, 0x00000000), (0x80000001, 0x80000000),
             (0x00018000, 0x00020000), (0x007FFFFF, 0x00800000), (0x80000000, 0x80000000),
             (0x7F800000, 0x7F800000), (0xFF800000, 0xFF800000)]
    check(all(out_of(u) == r for u, r in cases),
          "ties to even (down from even, up from odd, both signs), FLT_MAX -> inf, "
          "subnormals kept (not flushed), -0.0 and +-inf kept")
    rnd = ins[len(SPECIAL):]
    mags = np.abs(rnd[rnd != 0])
    check(mags.min() < 1e-25 and mags.max() > 1e25 and len(rnd) == N_RANDOM,
          "random entries span %.1e .. %.1e" % (mags.min(), mags.max()))


def rel(a, b):
    return float((a - b).norm() / b.norm())


def check_products(x, w, b, dout, res):
    # The operands' rounding is RNE too (torch against numpy bit twiddling).
    ok = all(np.array_equal(rc.to32(t.to(torch.bfloat16).to(torch.float32)).view(np.uint32),
                            rne_np(rc.to32(t)).view(np.uint32)) for t in (x, w, dout))
    check(ok, "x, w, dout: torch's bf16 rounding equals the bit-level RNE on every entry")

    # (2) torch's own bf16 matmul path (bf16 result: loose tolerance). The
    # right operand is passed as a transposed view (row-major A, column-major
    # B, as F.linear passes w.t()): that is torch 1.13's float32-accumulating
    # dot path, so the bf16 result is the fixture's product rounded to bf16.
    # With a row-major B (the plain dout @ w) this CPU build accumulates in
    # bf16, rounding every product and partial sum: printed as a note only.
    def colmajor(t):
        return t.t().contiguous().t()
    xb, wb, db_ = x.bfloat16(), w.bfloat16(), dout.bfloat16()
    tb = {"out": torch.matmul(xb, wb.t()),
          "din": torch.matmul(db_, colmajor(wb)),
          "dw": torch.matmul(db_.t().contiguous(), colmajor(xb))}
    plain = {"din": torch.matmul(db_, wb), "dw": torch.matmul(db_.t(), xb)}
    for n in ("out", "din", "dw"):
        exact = res[n] - b.to(torch.float64) if n == "out" else res[n]
        t64 = tb[n].to(torch.float64) + (b.to(torch.float64) if n == "out" else 0)
        r = rel(t64, res[n])
        rows = max(float((t64[i] - res[n][i]).norm() / res[n][i].norm())
                   for i in range(res[n].shape[0]))
        same = float((tb[n].to(torch.float64) == exact.to(torch.bfloat16).to(torch.float64))
                     .to(torch.float64).mean())
        check(tb[n].dtype == torch.bfloat16 and r < 1e-2 and rows < 1e-2 and same >= 0.99,
              "%s: torch.matmul on bf16 tensors agrees, relative norm error %.2e (worst row "
              "%.2e) < 1e-2; equals bf16(fixture) on %.1f%% of entries"
              % (n, r, rows, 100 * same))
    for n in ("din", "dw"):
        t64 = plain[n].to(torch.float64)
        print("note %s: plain torch.matmul (row-major right operand, bf16 accumulation in this "
              "build): relative norm error %.2e, worst row %.2e"
              % (n, rel(t64, res[n]), max(float((t64[i] - res[n][i]).norm() / res[n][i].norm())
                                          for i in range(res[n].shape[0]))))

    # (3) Rounding is visible: the unrounded float64 products differ.
    x64, w64, d64 = x.to(torch.float64), w.to(torch.float64), dout.to(torch.float64)
    raw = {"out": x64 @ w64.t() + b.to(torch.float64), "din": d64 @ w64, "dw": d64.t() @ x64}
    for n in ("out", "din", "dw"):
        r = rel(res[n], raw[n])
        check(r > 1e-4, "%s: differs from the unrounded float64 product by %.2e (> 1e-4)" % (n, r))
    small = float((res["out"][SMALL_ROW] - raw["out"][SMALL_ROW]).norm()
                  / (raw["out"][SMALL_ROW] - b.to(torch.float64)).norm())
    big = float((res["out"][BIG_ROW] - raw["out"][BIG_ROW]).norm() / raw["out"][BIG_ROW].norm())
    check(small > 1e-4 and big > 1e-4,
          "out rows %d (x1e-3) and %d (x1000): rounding error of the product %.2e, %.2e"
          % (SMALL_ROW, BIG_ROW, small, big))
    changed = sum(int((t.to(torch.bfloat16).to(torch.float32) != t).sum()) for t in (x, w, dout))
    total = x.numel() + w.numel() + dout.numel()
    check(changed > 0.99 * total, "rounding changes %d of %d operand entries" % (changed, total))

    # db from the unrounded dout, bias unrounded.
    check(rc.close(res["db"], d64.sum(0), 0, 0)
          and not rc.close(res["db"], bf16(dout).sum(0), 0, 1e-6),
          "db = sum of the UNROUNDED dout (differs from the bf16 one by %.2e)"
          % float((res["db"] - bf16(dout).sum(0)).abs().max()))
    check(not torch.equal(b, b.to(torch.bfloat16).to(torch.float32))
          and rc.close(res["out"] - bf16(x) @ bf16(w).t(), b.to(torch.float64), 0, 1e-12),
          "bias enters out unrounded")


def main():
    buf, arrays, (x, w, b, dout, round_in, round_out, res) = build()
    check(x.dtype == torch.float32 and all(t.dtype == np.float32 for t in arrays.values()),
          "inputs float32, every stored tensor F32")
    check_rounding(round_in, round_out)
    check_products(x, w, b, dout, res)
    back = rc.check_file(CFG, buf, arrays, build, LIMIT, "40000")
    want = {"x": (M, K), "w": (N, K), "b": (N,), "dout": (M, N), "out": (M, N),
            "din": (M, K), "dw": (N, K), "db": (N,),
            "round_in": (len(SPECIAL) + N_RANDOM,), "round_out": (len(SPECIAL) + N_RANDOM,)}
    check({n: tuple(a.shape) for n, a in back.items()} == want,
          "tensor names and shapes: " + ", ".join("%s %s" % (n, list(want[n])) for n in sorted(want)))
    print("out  |max| %.4g  rms %.4g" % (float(res["out"].abs().max()),
                                         float(res["out"].pow(2).mean().sqrt())))
    rc.finish("bf16_matmul.py", OUT, buf, arrays)


if __name__ == "__main__":
    main()
