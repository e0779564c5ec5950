#!/usr/bin/python3
"""PyTorch reference for the tiny data2vec 2.0 image model (tests/ref/README.md).

Written from ../../../shared/DATA2VEC.md and tests/ref/README.md only, never from
d2v's C code. Everything is computed in float64 and stored as float32 in
v2_image_tiny.safetensors next to this script:

  student.<name>           initial weights (the teacher starts equal)
  input.x, input.mask      u8 [B, C, H, W], u8 [B*M, N] (1 = masked)
  input.noise.<k>          f32 [B*M, N, D], decoder noise of step k
  expect.y, expect.target_cls, expect.pred, expect.loss    step 0
  expect.grad.<name>       step-0 gradients, before clipping
  expect.grad_norm, expect.lr, expect.tau, expect.losses    [STEPS]
  expect.student.<name>, expect.teacher.<name>             after STEPS updates

What the references share (checks, safetensors, schedules, the Adam and EMA
training loop, the AltBlock, sin-cos, patch embedding, the decoder's convs,
twins) is in refcommon.py next to this script.

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(finite-difference gradients, mask counts, teacher == student at step 0, loss
= sum of its terms, independent twins of attention, sin-cos and norms,
determinism, a read-back of the file) and exits non-zero when a check fails.
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
from refcommon import check, close  # noqa: E402

# ---------------------------------------------------------------------------
# Configuration (README table; stored verbatim as __metadata__["config"]).

CFG = collections.OrderedDict([
    ("modality", "image"), ("objective", "v2"),
    ("image_size", 16), ("patch", 4), ("channels", 1),
    ("dim", 32), ("heads", 2), ("mlp_dim", 128),
    ("prenet_depth", 1), ("depth", 2), ("top_k", 2),
    ("norm_eps", 1e-6),
    ("decoder_dim", 16), ("decoder_kernel", 3), ("decoder_layers", 2),
    ("decoder_groups", 4), ("decoder_residual", True),
    ("clone", 3),
    ("mask_noise_std", 0.01),
    ("cls_loss", 0.01),
    ("loss_scale", 0),
    ("lr", 1e-3), ("min_lr", 0), ("warmup", 2), ("max_update", 5),
    ("beta1", 0.9), ("beta2", 0.95), ("eps", 1e-8), ("weight_decay", 0.05),
    ("clip_norm", 4.0),
    ("ema_decay", 0.9), ("ema_end_decay", 0.99), ("ema_anneal_end_step", 4),
    ("mean", [0.5]), ("std", [0.25]),
])

B = 2                                   # images per batch
M = CFG["clone"]                        # masked copies per image
C = CFG["channels"]
S = CFG["image_size"]
P = CFG["patch"]
G = S // P                              # grid side
N = G * G                               # tokens per image
D = CFG["dim"]
H = CFG["heads"]
NB = CFG["prenet_depth"] + CFG["depth"]
DD = CFG["decoder_dim"]
NMASK_ROW = 12                          # masked tokens per row (README)
STEPS = CFG["max_update"]
SEED = 20240521

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "v2_image_tiny.safetensors")


# ---------------------------------------------------------------------------
# Parameters: names, shapes, layouts of the README; values drawn once.

def param_shapes():
    s = collections.OrderedDict()
    rc.patch_embed_shapes(s, CFG)
    s["context_norm.weight"] = (D,)
    s["context_norm.bias"] = (D,)
    rc.altblock_shapes(s, NB, D, CFG["mlp_dim"])
    rc.decoder_conv_shapes(s, CFG, 2)
    s["decoder.proj.weight"] = (D, DD)
    s["decoder.proj.bias"] = (D,)
    return s


def init_params(rng):
    """refcommon's rule (weights N(0, 1/fan_in), biases N(0, 0.02), LayerNorm
    weight 1 + N(0, 0.1), bias N(0, 0.05)); cls_token N(0, 1)."""
    return rc.init_params(param_shapes(), rng,
                          lambda name, z: z if name == "cls_token" else None)


# ---------------------------------------------------------------------------
# Inputs.

def make_inputs(rng):
    imgs, _ = rc.test_images(rng, S)
    x = rc.to_u8(imgs)                                           # [B, C, S, S]
    mask = np.stack(rc.distinct_rows(
        B * M, lambda: rc.keep_row(N, rng.permutation(N)[: N - NMASK_ROW])))   # [B*M, N]
    return x, mask, rc.decoder_noise(rng, CFG, B * M, N)


# ---------------------------------------------------------------------------
# Model.

POS = rc.sincos_2d(G, D)


def embed(p, x_u8):
    """u8 [B, C, S, S] -> tokens + sin-cos [B, N, D]."""
    return rc.patch_tokens(p, x_u8, CFG) + POS


def encoder(p, tokens):
    """tokens [R, T, D] (no CLS) -> (h [R, 1+T, D], FFN outputs of every block)."""
    R = tokens.shape[0]
    h = torch.cat([p["cls_token"].expand(R, 1, D), tokens], dim=1)
    h = F.layer_norm(h, (D,), p["context_norm.weight"], p["context_norm.bias"],
                     CFG["norm_eps"])
    return rc.altblocks(p, h, CFG)


def decoder(p, z):
    """z [R, N, D] -> pred [R, N, D]."""
    R = z.shape[0]
    z = rc.decoder_convs(p, z.transpose(1, 2).reshape(R, D, G, G), CFG, F.conv2d)
    z = z.reshape(R, DD, N).transpose(1, 2)
    return F.linear(z, p["decoder.proj.weight"], p["decoder.proj.bias"])


def student_forward(p, x_u8, mask, noise):
    """-> pred [B*M, N, D], h_cls [B*M, D]."""
    x = embed(p, x_u8).repeat_interleave(M, dim=0)               # [B*M, N, D]
    kept, _, idx3 = rc.gather_kept(x, mask)
    h, _ = encoder(p, kept)                                      # CLS first
    return decoder(p, rc.decoder_input(h[:, 1:], idx3, mask, noise)), h[:, 0]


def teacher_targets(p, x_u8):
    """-> y [B, N, D], target_cls [B, D]."""
    _, fs = encoder(p, embed(p, x_u8))
    top = rc.top_k(fs, CFG)                                      # main blocks only
    y = F.layer_norm(rc.mean_instance_norm([f[:, 1:] for f in top]), (D,), eps=1e-5)
    return y, y.mean(dim=1)


def d2v_loss(pred, h_cls, y, tcls, mask):
    s = rc.loss_scale(CFG)
    reg, n_mask = rc.masked_sq_err(pred, y, mask, M, s)
    cls = CFG["cls_loss"] * n_mask * (s * (h_cls - tcls.repeat_interleave(M, 0)) ** 2).sum()
    return (reg + cls) / n_mask


# ---------------------------------------------------------------------------
# Training and the fixture.

def train(init, x_u8, mask, noises):
    def step(k, sp, tp, leaves):
        with torch.no_grad():
            y, tcls = teacher_targets(tp, x_u8)
        pred, h_cls = student_forward(leaves, x_u8, mask, noises[k])
        keep = {"y": y, "target_cls": tcls, "pred": pred.detach(), "h_cls": h_cls.detach()}
        return d2v_loss(pred, h_cls, y, tcls, mask), keep
    return rc.train(CFG, init, step)


def build():
    rng = np.random.RandomState(SEED)
    init = init_params(rng)
    x_np, mask_np, noise_np = make_inputs(rng)
    x_u8, mask, noises = rc.input_tensors(x_np, mask_np, noise_np)
    rec = train(init, x_u8, mask, noises)
    buf, t = rc.fixture(CFG, init, rec, rc.input_arrays(x_np, mask_np, noise_np),
                        extra=("target_cls",))
    return buf, t, (init, x_u8, mask, noises, rec)


# ---------------------------------------------------------------------------
# Self-checks.

def check_twins(init, x_u8):
    rc.check_sincos(POS, G, D)

    # Attention: torch's own multi-head attention with the same [q;k;v] layout,
    # and head by head.
    rc.check_attention(init, CFG, 5)

    # GELU (erf), channel LayerNorm, instance norm: explicit formulas.
    z = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(2))
    rc.check_gelu(z)
    rc.check_channel_ln(z, "decoder LayerNorm over channels equals the formula")
    rc.check_instance_norm(N, D, "positions")

    # Patch embedding: explicit patch gather + matmul, row-major token order.
    check(close(embed(init, x_u8), rc.patch_ref(init, x_u8, CFG) + POS, 1e-12, 1e-12),
          "patch embedding equals explicit per-patch matmul (row-major)")


def check_inputs(x_np, mask_np, noise_np):
    rc.check_mask_rows(mask_np, B * M, N, NMASK_ROW)
    rc.check_image_input(x_np, CFG, B)
    rc.check_noise(noise_np, STEPS)


def check_loss_terms(init, x_u8, mask, noise, rec):
    y, tcls = teacher_targets(init, x_u8)
    pred, h_cls = student_forward(init, x_u8, mask, noise)
    s = 1.0 / math.sqrt(D)
    reg, n_mask = rc.loss_by_hand(pred, y, mask, M, s)
    cls = 0.0
    for r in range(B * M):
        cls += s * float(((h_cls[r] - y[r // M].mean(0)) ** 2).sum())
    total = reg / n_mask + CFG["cls_loss"] * cls
    loss0 = float(rec["loss"])
    check(n_mask == B * M * NMASK_ROW, "N_mask = %d" % n_mask)
    check(abs(total - loss0) < 1e-12 * max(1.0, abs(loss0)),
          "step-0 loss %.12f = regression %.12f + cls %.12f" % (loss0, reg / n_mask,
                                                               CFG["cls_loss"] * cls))
    rc.check_recomputed(rec, y, pred)
    # The decoder input carries the noise at the masked slots only.
    rc.check_noise_slots(lambda nz: student_forward(init, x_u8, mask, nz)[0], pred, mask, noise)


def check_grads(init, x_u8, mask, noise, rec):
    y, tcls = teacher_targets(init, x_u8)
    y, tcls = y.detach(), tcls.detach()

    def loss_of(p):
        pred, h_cls = student_forward(p, x_u8, mask, noise)
        return d2v_loss(pred, h_cls, y, tcls, mask)
    names = ["cls_token", "patch_embed.bias", "context_norm.weight", "blocks.0.attn.qkv.bias",
             "blocks.2.norm1.weight", "decoder.layers.0.conv.bias", "decoder.layers.1.conv.bias",
             "decoder.proj.bias"]
    check(rc.gradcheck_loss(init, names, loss_of),
          "torch.autograd.gradcheck of the loss on %d parameters" % len(names))

    # Central differences on single entries of the big weights, compared with
    # the stored step-0 gradient (float64 before the cast).
    worst, _ = rc.central_diff(init, rec["grad"], loss_of, rc.random_entries(2))
    check(worst < 1e-5, "central differences match autograd on every weight matrix "
          "(worst relative error %.2e)" % worst)


def main():
    buf, tensors, (init, x_u8, mask, noises, rec) = build()

    check_inputs(tensors["input.x"], tensors["input.mask"],
                 [tensors["input.noise.%d" % k] for k in range(STEPS)])
    check(rec["teacher_equal_at_0"], "teacher equals student at step 0")
    check_twins(init, x_u8)
    check_loss_terms(init, x_u8, mask, noises[0], rec)
    check_grads(init, x_u8, mask, noises[0], rec)

    rc.check_schedules(rec)
    rc.check_clipped(rec)
    rc.check_moved(rec, init)
    check(rc.ema_moved(rec, init, init),
          "every teacher parameter differs from the student and from the start")

    rc.check_file(CFG, buf, tensors, build, 2 * 1024 * 1024, "2 MB")
    rc.summary(rec)
    rc.finish("v2_image.py", OUT, buf, tensors)


if __name__ == "__main__":
    main()
