#!/usr/bin/python3
"""PyTorch reference for the tiny data2vec 2.0 audio model (tests/ref/README.md).

Written from ../../../shared/DATA2VEC.md and tests/ref/README.md only, never from
d2v's C code. Everything is computed in float64 and stored as float32 in
v2_audio_tiny.safetensors next to this script:

  student.<name>           initial weights (the teacher starts equal)
  input.x, input.mask      f32 [B, S] waveform (normalised), u8 [B*M, N] (1 = masked)
  input.noise.<k>          f32 [B*M, N, D], decoder noise of step k
  expect.feat              f32 [B, N, D], feature encoder + feature_norm + feature_proj
  expect.y, expect.pred, expect.loss                        step 0
  expect.grad.<name>       step-0 gradients, before clipping
  expect.grad_norm, expect.lr, expect.tau, expect.losses    [STEPS]
  expect.student.<name>    after STEPS updates, every parameter
  expect.teacher.<name>    after STEPS updates, every non-decoder parameter
                           (feature_* are shared: equal to the student's)

What the references share (checks, safetensors, schedules, the Adam and EMA
training loop, the AltBlock, the feature encoder and conv-pos of the speech
models, twins) is in refcommon.py next to this script.

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(finite-difference gradients, mask counts, ALiBi slopes, teacher == student at
step 0, the loss recomputed term by term, independent twins of the feature
encoder, conv-pos, ALiBi attention, decoder and norms, determinism, a read-back
of the file) and exits non-zero when a check fails.
"""

import collections
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcommon as rc  # noqa: E402  (float64, one thread)
from refcommon import check, close, gelu_ref, ln_ref  # noqa: E402

# ---------------------------------------------------------------------------
# Configuration (README table; stored verbatim as __metadata__["config"]).

CFG = collections.OrderedDict([
    ("modality", "audio"), ("objective", "v2"),
    ("conv_dim", 16),
    ("dim", 48), ("heads", 3), ("mlp_dim", 96),
    ("prenet_depth", 1), ("depth", 2), ("top_k", 2),
    ("norm_eps", 1e-5),
    ("pos_conv_depth", 2), ("pos_conv_kernel", 5), ("pos_conv_groups", 4),
    ("alibi", True),
    ("decoder_dim", 24), ("decoder_kernel", 3), ("decoder_layers", 2),
    ("decoder_groups", 4), ("decoder_residual", True), ("decoder_proj_layers", 1),
    ("clone", 2),
    ("mask_noise_std", 0.01), ("cls_loss", 0), ("loss_scale", 0),
    ("target_final_norm", "none"),
    ("embed_dropout", 0), ("encoder_dropout", 0), ("attention_dropout", 0),
    ("activation_dropout", 0), ("post_mlp_drop", 0), ("input_dropout", 0),
    ("context_dropout", 0), ("layerdrop", 0), ("drop_path", 0),
    ("lr", 1e-3), ("min_lr", 0), ("warmup", 2), ("max_update", 5),
    ("beta1", 0.9), ("beta2", 0.98), ("eps", 1e-6), ("weight_decay", 0.01),
    ("clip_norm", 1.0),
    ("ema_decay", 0.9), ("ema_end_decay", 0.99), ("ema_anneal_end_step", 4),
])

B = 2                                   # utterances per batch
M = CFG["clone"]                        # masked copies per utterance
S = 6400                                # samples per utterance (README)
N = rc.conv_len(S)                      # 19 frames
D = CFG["dim"]
H = CFG["heads"]
NB = CFG["prenet_depth"] + CFG["depth"]
DD = CFG["decoder_dim"]
K = CFG["decoder_kernel"]
DG = CFG["decoder_groups"]
NMASK_ROW = 9                           # masked frames per row (README)
STEPS = CFG["max_update"]
SEED = 20240611

SHARED = ("feature_extractor.", "feature_norm.", "feature_proj.")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "v2_audio_tiny.safetensors")


# ---------------------------------------------------------------------------
# ALiBi slopes: fairseq's get_slopes (DATA2VEC.md §2.2), for any head count.

def alibi_slopes(n):
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))              # 2^(-8/n)
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    c = 2 ** math.floor(math.log2(n))
    return power_of_2(c) + alibi_slopes(2 * c)[0::2][: n - c]


SLOPES = torch.tensor(alibi_slopes(H))


# ---------------------------------------------------------------------------
# Parameters: names, shapes, layouts of the README; values drawn once.

def param_shapes():
    s = collections.OrderedDict()
    rc.feature_encoder_shapes(s, CFG)
    rc.pos_conv_shapes(s, CFG)
    s["alibi_scale"] = (1, 1, H, 1, 1)
    s["context_norm.weight"] = (D,)
    s["context_norm.bias"] = (D,)
    rc.altblock_shapes(s, NB, D, CFG["mlp_dim"])
    rc.decoder_conv_shapes(s, CFG, 1)
    s["decoder.proj.weight"] = (D, DD)
    s["decoder.proj.bias"] = (D,)
    return s


def is_shared(name):
    return name.startswith(SHARED)


in_teacher = rc.not_decoder


def init_params(rng):
    """refcommon's rule (weights N(0, 1/fan_in), biases N(0, 0.02), LayerNorm
    weight 1 + N(0, 0.1), bias N(0, 0.05)); alibi_scale 1 + 0.1 N(0, 1), kept
    > 0 (so the clamp at 0 is inactive and its gradient non-trivial)."""
    return rc.init_params(param_shapes(), rng, lambda name, z: np.abs(1.0 + 0.1 * z)
                          if name == "alibi_scale" else None)


def decayed(name, t):
    return rc.decayed(name, t) and name != "alibi_scale"


# ---------------------------------------------------------------------------
# Inputs.

def block_mask_row(rng):
    """compute_block_mask_1d-like (DATA2VEC.md §4.5): floor(N (R + A) / 5) centres
    with replacement, each masks c-2..c+2 clamped, then the exact-count step
    clears or adds uniformly random single frames down/up to 9."""
    n_c = int(N * (0.5 + 0.05) / 5)
    row = np.zeros(N, dtype=np.uint8)
    for c in rng.randint(0, N, size=n_c):
        for o in range(-2, 3):
            row[min(max(c + o, 0), N - 1)] = 1
    n = int(row.sum())
    if n > NMASK_ROW:
        on = np.flatnonzero(row)
        row[rng.choice(on, n - NMASK_ROW, replace=False)] = 0
    elif n < NMASK_ROW:
        off = np.flatnonzero(row == 0)
        row[rng.choice(off, NMASK_ROW - n, replace=False)] = 1
    return row


def make_inputs(rng):
    t = np.arange(S) / 16000.0
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t)
    w0 = (np.sin(2 * np.pi * 180 * t) + 0.6 * env * np.sin(2 * np.pi * 410 * t + 0.3)
          + 0.3 * rng.standard_normal(S))
    w1 = (np.sin(2 * np.pi * (100 * t + 1500 * t * t)) * (1 + 0.5 * np.cos(2 * np.pi * 5 * t))
          + 0.4 * np.sin(2 * np.pi * 60 * t) + 0.3 * rng.standard_normal(S))
    w1[: S // 4] *= 0.3                                          # a quieter start
    x = rc.normalised_waves([w0, w1])                            # [B, S]

    while True:
        rows = rc.distinct_rows(B * M, lambda: block_mask_row(rng))
        rl = [rc.runs(r) for r in rows]
        if all(max(r) >= 3 for r in rl) and any(1 in r for r in rl):
            break                                                # blocks and singles
    mask = np.stack(rows)                                        # [B*M, N]
    return x, mask, rc.decoder_noise(rng, CFG, B * M, N)


# ---------------------------------------------------------------------------
# Model.

def feature_encoder(p, x):
    """waveform [B, S] -> feat [B, N, D] (refcommon: 7 x (Conv1d, no bias ->
    LN(C) -> GELU), feature_norm, feature_proj). Shared with the teacher."""
    return rc.feature_encoder(p, x, CFG)


def pos_encode(p, z):
    """z [R, T, D] -> z + pos(z) (refcommon: grouped Conv1d, pad k//2 -> LN over
    channels -> GELU, pos_conv_depth times). Student and teacher each have theirs."""
    return rc.pos_encode(p, z, CFG)


def alibi_bias(p, pos):
    """pos [R, T] original frame indices -> [R, H, T, T]:
    -m_h * max(alibi_scale_h, 0) * |p_i - p_j|."""
    scale = p["alibi_scale"].reshape(H).clamp(min=0)
    dist = (pos[:, :, None] - pos[:, None, :]).abs().double()   # [R, T, T]
    return -(SLOPES * scale).view(1, H, 1, 1) * dist.unsqueeze(1)


def attention(p, pre, x, bias):
    """x [R, T, D], bias [R, H, T, T] -> proj(attn(qkv(x))) [R, T, D]."""
    return rc.attention(p, pre, x, H, bias)


def block(p, i, x, bias):
    """Post-LN AltBlock with the ALiBi bias. Returns (out, f)."""
    return rc.altblock(p, i, x, H, CFG["norm_eps"], bias)


def encoder(p, x, pos):
    """x [R, T, D] at original frames pos [R, T] -> (h [R, T, D], FFN outputs of
    every block): context_norm, then every block (prenet and main) with ALiBi."""
    bias = alibi_bias(p, pos)
    h = F.layer_norm(x, (D,), p["context_norm.weight"], p["context_norm.bias"],
                     CFG["norm_eps"])
    return rc.altblocks(p, h, CFG, bias)


def decoder(p, z):
    """z [R, N, D] -> pred [R, N, D] (Decoder1d, groups 4, residual when the
    channel counts match, projection Linear(Dd -> D))."""
    z = rc.decoder_convs(p, z.transpose(1, 2), CFG, F.conv1d)   # [R, Dd, N]
    return F.linear(z.transpose(1, 2), p["decoder.proj.weight"], p["decoder.proj.bias"])


def student_from_feat(p, feat, mask, noise):
    """feat [B, N, D] -> pred [B*M, N, D], h [B*M, V, D]."""
    z = feat.repeat_interleave(M, dim=0)                         # [B*M, N, D]
    z = torch.where(mask.bool().unsqueeze(-1), torch.zeros_like(z), z)   # masked frames zeroed
    kept, idx, idx3 = rc.gather_kept(pos_encode(p, z), mask)     # conv-pos on the full row
    h, _ = encoder(p, kept, idx)
    return decoder(p, rc.decoder_input(h, idx3, mask, noise)), h


def student_forward(p, wave, mask, noise):
    return student_from_feat(p, feature_encoder(p, wave), mask, noise)


def teacher_from_feat(tp, feat):
    """Teacher conv-pos, context_norm, blocks (ALiBi over 0..N-1) -> y [B, N, D]."""
    pos = torch.arange(N).expand(feat.shape[0], N)
    _, fs = encoder(tp, pos_encode(tp, feat), pos)
    return rc.mean_instance_norm(rc.top_k(fs, CFG))              # target_final_norm none


def teacher_targets(tp, sp, wave):
    """The teacher consumes the STUDENT's feature encoder output."""
    return teacher_from_feat(tp, feature_encoder(sp, wave))


def d2v_loss(pred, y, mask):
    return rc.regression_loss(CFG, pred, y, mask)


# ---------------------------------------------------------------------------
# Training and the fixture.

def train(init, x, mask, noises):
    def step(k, sp, tp, leaves):
        with torch.no_grad():
            y = teacher_targets(tp, sp, x)
        pred, _ = student_forward(leaves, x, mask, noises[k])
        keep = {"y": y, "pred": pred.detach()}
        if k == 0:
            with torch.no_grad():
                keep["feat"] = feature_encoder(sp, x)
        return d2v_loss(pred, y, mask), keep

    def after(k, rec, keep, grads, sp, tp):
        rec.setdefault("alibi_min", []).append(
            min(float(sp["alibi_scale"].min()), float(tp["alibi_scale"].min())))
    return rc.train(CFG, init, step, decayed, in_teacher, is_shared, after)


def build():
    rng = np.random.RandomState(SEED)
    init = init_params(rng)
    x_np, mask_np, noise_np = make_inputs(rng)
    x, mask, noises = rc.input_tensors(x_np, mask_np, noise_np, np.float64)
    rec = train(init, x, mask, noises)
    buf, t = rc.fixture(CFG, init, rec, rc.input_arrays(x_np, mask_np, noise_np), extra=("feat",),
                        in_teacher=in_teacher)
    return buf, t, (init, x, mask, noises, rec)


# ---------------------------------------------------------------------------
# Self-checks.

def check_slopes():
    s3 = alibi_slopes(3)
    check(s3 == [2.0 ** -4, 2.0 ** -8, 2.0 ** -2], "ALiBi slopes for 3 heads = [2^-4, 2^-8, 2^-2]")
    e12 = [1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5]
    s12 = alibi_slopes(12)
    check(len(s12) == 12 and all(abs(a - 2.0 ** -e) <= 1e-15 * 2.0 ** -e for a, e in zip(s12, e12)),
          "ALiBi slopes for 12 heads = [2^-1 .. 2^-8, 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5]")
    check(alibi_slopes(8) == [2.0 ** -e for e in range(1, 9)], "ALiBi slopes for 8 heads = 2^-1 .. 2^-8")
    check(alibi_slopes(2) == [2.0 ** -4, 2.0 ** -8] and alibi_slopes(1) == [2.0 ** -8],
          "ALiBi slopes for 2 and 1 heads")


def check_twins(init, x, mask):
    # Frame count; feature encoder and conv-pos by explicit windows + einsum,
    # LayerNorm and GELU formulas.
    rc.check_frame_counts(S, N, 19)
    rc.check_feature_encoder(init, x, CFG, N)
    rc.check_pos_encode(init, CFG, N)

    # ALiBi: fairseq's masked_alibi (full [H, N, N] bias, rows and columns
    # gathered at the kept frames) equals the bias built from kept positions.
    full = torch.zeros(H, N, N)
    sc = init["alibi_scale"].reshape(H)
    for hh in range(H):
        for i in range(N):
            for j in range(N):
                full[hh, i, j] = -SLOPES[hh] * sc[hh] * abs(i - j)
    idx = rc.keep_index(mask)
    ok = True
    got = alibi_bias(init, idx)
    for r in range(B * M):
        ii = idx[r]
        ok = ok and close(got[r], full[:, ii][:, :, ii], 1e-15, 0)
    check(ok and close(alibi_bias(init, torch.arange(N).expand(1, N))[0], full, 1e-15, 0),
          "ALiBi of kept frames equals the gathered full-length bias")
    neg = dict(init)
    neg["alibi_scale"] = -init["alibi_scale"]
    check(bool((alibi_bias(neg, idx) == 0).all()), "negative alibi_scale is clamped to 0")

    # Attention with ALiBi: torch's own multi-head attention with a float mask.
    xs = torch.randn(3, 7, D, generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([[0, 1, 2, 5, 9, 10, 18], [0, 3, 4, 5, 6, 7, 8], [2, 4, 6, 8, 10, 12, 14]])
    bias = alibi_bias(init, pos)
    ref = rc.mha_ref(init, "blocks.1.", xs, H, attn_mask=bias.reshape(3 * H, 7, 7))
    check(close(attention(init, "blocks.1.", xs, bias), ref, 1e-12, 1e-12),
          "ALiBi attention equals F.multi_head_attention_forward with a float mask")

    # GELU, channel LayerNorm, instance norm: formulas.
    z = torch.randn(4, 6, 9, generator=torch.Generator().manual_seed(2))
    rc.check_gelu(z)
    rc.check_channel_ln(z, "LayerNorm over channels equals the formula")
    rc.check_instance_norm(N, D, "frames")

    # Decoder: explicit grouped conv, residual on layer 1 only, Linear.
    zin = torch.randn(2, N, D, generator=torch.Generator().manual_seed(4))
    cur = zin.transpose(1, 2)
    for j in range(CFG["decoder_layers"]):
        y = rc.conv1d_ref(cur, init["decoder.layers.%d.conv.weight" % j],
                          init["decoder.layers.%d.conv.bias" % j], pad=K // 2, groups=DG)
        y = gelu_ref(ln_ref(y.transpose(1, 2))).transpose(1, 2)
        cur = y + cur if j == 1 else y
    out = cur.transpose(1, 2) @ init["decoder.proj.weight"].t() + init["decoder.proj.bias"]
    check(close(decoder(init, zin), out, 1e-12, 1e-12),
          "decoder equals explicit grouped conv + LN + GELU (+ residual on layer 1), Linear")


def check_inputs(x_np, mask_np, noise_np):
    rc.check_wave_input(x_np, B, S)
    rc.check_mask_rows(mask_np, B * M, N, NMASK_ROW)
    rl = [rc.runs(r) for r in mask_np]
    check(all(max(r) >= 3 for r in rl) and any(1 in r for r in rl),
          "masks have contiguous blocks and single frames (runs %s)" % rl)
    rc.check_noise(noise_np, STEPS)


def check_loss_terms(init, x, mask, noise, rec):
    feat = feature_encoder(init, x)
    check(close(feat, rec["feat"], 0, 0), "expect.feat recomputed")
    y = teacher_from_feat(init, feat)
    pred, h = student_from_feat(init, feat, mask, noise)
    rc.check_loss_by_hand(rec, y, pred, mask, M, 1.0 / math.sqrt(D), NMASK_ROW)

    # Targets by hand: the teacher runs per sample, the top-2 = both main blocks
    # (1, 2; never the prenet block 0), IN over frames, averaged.
    acc = 0
    for b in range(B):
        xb = feat[b:b + 1] + 0
        xb = pos_encode(init, xb)
        hb = ln_ref(xb, init["context_norm.weight"], init["context_norm.bias"])
        bias = alibi_bias(init, torch.arange(N).view(1, N))
        fs = []
        for i in range(NB):
            hb, f = block(init, i, hb, bias)
            fs.append(f)
        yb = rc.dim1_norm_ref(fs[1]) + rc.dim1_norm_ref(fs[2])
        acc = yb / 2 if b == 0 else torch.cat([acc, yb / 2])
    check(close(acc, rec["y"], 1e-12, 1e-12), "y = mean of IN(f) of main blocks 1 and 2, per sample")

    rc.check_noise_slots(lambda nz: student_from_feat(init, feat, mask, nz)[0], pred, mask, noise)
    # Masked frames are zeroed before the conv-pos: changing feat at a frame
    # masked in row 0 leaves h of row 0 unchanged but changes row 1 where it is
    # kept (if it is kept there).
    n = int(torch.nonzero(mask[0] == 1)[0])
    f2 = feat.clone()
    f2[0, n] += 1.0
    h2 = student_from_feat(init, f2, mask, noise)[1]
    check(close(h2[0], h[0], 0, 0), "a masked frame does not reach the student encoder")
    # The conv-pos runs on the full zeroed row before the gather: the kept
    # frames' encoder input differs from conv-pos applied to the kept frames only.
    z = feat.repeat_interleave(M, 0)
    z = torch.where(mask.bool().unsqueeze(-1), torch.zeros_like(z), z)
    a1 = rc.gather_kept(pos_encode(init, z), mask)[0]
    a2 = pos_encode(init, rc.gather_kept(z, mask)[0])
    check(not close(a1, a2, 1e-6, 1e-6), "conv-pos over the full zeroed row differs from "
          "conv-pos over the gathered kept frames (the order matters and is exercised)")


def check_grads(init, x, mask, noise, rec):
    y = teacher_targets(init, init, x).detach()

    def loss_of(p):
        return d2v_loss(student_forward(p, x, mask, noise)[0], y, mask)
    names = ["alibi_scale", "feature_extractor.conv_layers.0.conv.weight",
             "feature_extractor.conv_layers.3.norm.weight",
             "feature_extractor.conv_layers.6.norm.bias", "feature_norm.weight",
             "feature_proj.bias", "pos_conv.0.bias", "pos_conv.1.bias", "context_norm.weight",
             "blocks.0.attn.qkv.bias", "blocks.2.norm2.bias", "decoder.layers.0.conv.bias",
             "decoder.layers.1.conv.bias", "decoder.proj.bias"]
    check(rc.gradcheck_loss(init, names, loss_of),
          "torch.autograd.gradcheck of the loss on %d parameters (%d entries), "
          "alibi_scale and feature_extractor.conv_layers.0.conv.weight included"
          % (len(names), sum(init[n].numel() for n in names)))
    g = rec["grad"]["alibi_scale"].flatten()
    check(bool((g.abs() > 1e-6).all()), "alibi_scale gradient non-trivial on every head %s"
          % ["%.3g" % float(v) for v in g])

    # Central differences on single entries of every weight tensor of rank > 1
    # (the seven feature-encoder convs and alibi_scale included), compared with
    # the stored step-0 gradient (float64).
    worst, count = rc.central_diff(init, rec["grad"], loss_of, rc.random_entries(3))
    check(worst < 1e-5, "central differences match autograd on %d entries of every weight "
          "tensor (worst relative error %.2e)" % (count, worst))


def main():
    buf, tensors, (init, x, mask, noises, rec) = build()

    check_inputs(tensors["input.x"], tensors["input.mask"],
                 [tensors["input.noise.%d" % k] for k in range(STEPS)])
    check_slopes()
    check(rec["teacher_equal_at_0"], "teacher equals student at step 0")
    check_twins(init, x, mask)
    check_loss_terms(init, x, mask, noises[0], rec)
    check_grads(init, x, mask, noises[0], rec)

    rc.check_schedules(rec)
    rc.check_clipped(rec)
    check(float(init["alibi_scale"].min()) > 0 and min(rec["alibi_min"]) > 0,
          "alibi_scale stays positive (the clamp is inactive; min %.4f)" % min(rec["alibi_min"]))
    rc.check_moved(rec, init)
    rc.check_shared_teacher(rec, init, in_teacher, is_shared, "every non-decoder parameter",
                            "feature_*", "teacher parameters")

    rc.check_file(CFG, buf, tensors, build, 2 * 1024 * 1024, "2 MB")
    rc.summary(rec)
    rc.finish("v2_audio.py", OUT, buf, tensors)


if __name__ == "__main__":
    main()
