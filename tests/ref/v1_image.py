#!/usr/bin/python3
"""PyTorch reference for the tiny data2vec (v1) image model (tests/ref/README.md).

Written from ../../../shared/DATA2VEC.md and tests/ref/README.md only, never from
d2v's C code. The BEiT-based v1 vision model (pre-LN blocks with LayerScale, a
learned mask token, final LayerNorm + Linear head, end-of-block targets,
Smooth-L1 with mean reduction, EMA of every parameter), with d2v's departure:
no relative position bias, the fixed 2-D sin-cos table of v2_image instead.
Everything is computed in float64 and stored as float32 in
v1_image_tiny.safetensors next to this script:

  student.<name>           initial weights (the teacher starts equal)
  input.x, input.mask      u8 [B, C, H, W], u8 [B, N] (1 = masked; 5, 7, 9 per image)
  expect.y, expect.pred, expect.loss                        step 0
  expect.grad.<name>       step-0 gradients, before clipping
  expect.grad_norm, expect.lr, expect.tau, expect.losses    [STEPS]
  expect.student.<name>, expect.teacher.<name>             after STEPS updates

What the references share (checks, safetensors, schedules, the Adam and EMA
training loop, sin-cos, patch embedding, attention, twins) is in refcommon.py
next to this script.

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(gradcheck and central differences of the loss gradient, the key bias
gradient exactly 0, mask counts, teacher == student at step 0, the loss and the
targets recomputed by hand, independent twins of attention, blocks, sin-cos,
patch embedding and norms, determinism, a read-back of the file) and exits
non-zero when a check fails.
"""

import collections
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
    ("modality", "image"), ("objective", "v1"),
    ("image_size", 16), ("patch", 4), ("channels", 1),
    ("dim", 32), ("heads", 2), ("mlp_dim", 128),
    ("prenet_depth", 0), ("depth", 3), ("top_k", 2),
    ("norm_eps", 1e-6),
    ("layer_scale", 0.1),
    ("loss_beta", 2),
    ("clone", 1),
    ("lr", 1e-3), ("min_lr", 0), ("warmup", 2), ("max_update", 5),
    ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("weight_decay", 0.05),
    ("clip_norm", 3.0),
    ("ema_decay", 0.9), ("ema_end_decay", 0.99), ("ema_anneal_end_step", 4),
    ("mean", [0.5]), ("std", [0.25]),
    ("embed_dropout", 0), ("encoder_dropout", 0), ("attention_dropout", 0),
    ("activation_dropout", 0), ("post_mlp_drop", 0), ("input_dropout", 0),
    ("context_dropout", 0), ("drop_path", 0),
])

B = 3                                   # images per batch (one mask each)
C = CFG["channels"]
S = CFG["image_size"]
P = CFG["patch"]
G = S // P                              # grid side
N = G * G                               # tokens per image
D = CFG["dim"]
H = CFG["heads"]
FF = CFG["mlp_dim"]
NB = CFG["prenet_depth"] + CFG["depth"]
BETA = float(CFG["loss_beta"])
NMASK = [5, 7, 9]                       # masked tokens of image 0, 1, 2 (README)
STEPS = CFG["max_update"]
SEED = 20240607

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "v1_image_tiny.safetensors")


# ---------------------------------------------------------------------------
# Parameters: names, shapes, layouts of the README; values drawn once.

def param_shapes():
    s = collections.OrderedDict()
    rc.patch_embed_shapes(s, CFG)
    s["mask_token"] = (1, 1, D)
    for i in range(NB):
        p = "blocks.%d." % i
        s[p + "norm1.weight"] = (D,)
        s[p + "norm1.bias"] = (D,)
        s[p + "attn.qkv.weight"] = (3 * D, D)
        s[p + "attn.qkv.bias"] = (3 * D,)
        s[p + "attn.proj.weight"] = (D, D)
        s[p + "attn.proj.bias"] = (D,)
        s[p + "gamma_1"] = (D,)
        s[p + "norm2.weight"] = (D,)
        s[p + "norm2.bias"] = (D,)
        s[p + "mlp.fc1.weight"] = (FF, D)
        s[p + "mlp.fc1.bias"] = (FF,)
        s[p + "mlp.fc2.weight"] = (D, FF)
        s[p + "mlp.fc2.bias"] = (D,)
        s[p + "gamma_2"] = (D,)
    s["norm.weight"] = (D,)
    s["norm.bias"] = (D,)
    s["head.weight"] = (D, D)
    s["head.bias"] = (D,)
    return s


def init_params(rng):
    """As v2_image (refcommon's rule): Linear/conv weights N(0, 1/fan_in);
    biases N(0, 0.02); LayerNorm weight 1 + N(0, 0.1), bias N(0, 0.05);
    cls_token and mask_token N(0, 1). LayerScale gammas 0.1 + 0.05 N(0, 1). The
    key third of every qkv bias (rows D .. 2D-1) is exactly 0 (BEiT has no key
    bias)."""
    def special(name, z):
        if name in ("cls_token", "mask_token"):
            return z
        if ".gamma_" in name:
            return CFG["layer_scale"] + 0.05 * z
        if name.endswith("attn.qkv.bias"):
            v = 0.02 * z
            v[D:2 * D] = 0.0
            return v
        return None
    return rc.init_params(param_shapes(), rng, special)


decayed = rc.decayed


# ---------------------------------------------------------------------------
# Inputs.

def make_inputs(rng):
    imgs, (yy, xx) = rc.test_images(rng, S)
    img2 = 128 + 70 * np.sign(np.sin(xx / 1.7) * np.sin(yy / 2.1)) + 4 * (yy - xx) \
        + rng.normal(0, 12, (S, S))
    x = rc.to_u8(imgs + [img2])                                  # [B, C, S, S]

    mask = np.zeros((B, N), dtype=np.uint8)
    for b, k in enumerate(NMASK):
        mask[b, rng.permutation(N)[:k]] = 1                      # [B, N]
    return x, mask


# ---------------------------------------------------------------------------
# Model.

POS = rc.sincos_2d(G, D)


def patch_tokens(p, x_u8):
    """u8 [B, C, S, S] -> patch embeddings [B, N, D] (row-major grid, no positions)."""
    return rc.patch_tokens(p, x_u8, CFG)


def qkv_bias(p, pre):
    """BEiT's cat(q_bias, zeros, v_bias): the key third never enters the graph,
    so its gradient is exactly 0 (and it is exactly 0 in the weights anyway)."""
    b = p[pre + "attn.qkv.bias"]
    return torch.cat([b[:D], torch.zeros(D), b[2 * D:]])


def attention(p, pre, x, full_bias=False):
    """x [R, T, D] -> proj(attn(qkv(x))) [R, T, D]. No position bias."""
    return rc.attention(p, pre, x, H, qkv_bias=None if full_bias else qkv_bias(p, pre))


def block(p, i, x, full_bias=False):
    """Pre-LN block with LayerScale; returns the block output (after the second residual)."""
    pre = "blocks.%d." % i
    eps = CFG["norm_eps"]
    r = F.layer_norm(x, (D,), p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps)
    x = x + p[pre + "gamma_1"] * attention(p, pre, r, full_bias)
    r = F.layer_norm(x, (D,), p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps)
    f = F.linear(F.gelu(F.linear(r, p[pre + "mlp.fc1.weight"], p[pre + "mlp.fc1.bias"])),
                 p[pre + "mlp.fc2.weight"], p[pre + "mlp.fc2.bias"])
    return x + p[pre + "gamma_2"] * f


def encoder(p, tokens, full_bias=False):
    """tokens [R, N, D] (positions included, no CLS) -> end of every block [R, 1+N, D]."""
    R = tokens.shape[0]
    h = torch.cat([p["cls_token"].expand(R, 1, D), tokens], dim=1)
    outs = []
    for i in range(NB):
        h = block(p, i, h, full_bias)
        outs.append(h)
    return outs


def student_forward(p, x_u8, mask, full_bias=False):
    """-> pred [B, 1+N, D]: mask token at the masked patches, then sin-cos,
    CLS, the blocks, norm and head at every position."""
    t = patch_tokens(p, x_u8)
    w = mask.double().unsqueeze(-1)                              # [B, N, 1]
    t = t * (1 - w) + p["mask_token"] * w
    h = encoder(p, t + POS, full_bias)[-1]
    h = F.layer_norm(h, (D,), p["norm.weight"], p["norm.bias"], CFG["norm_eps"])
    return F.linear(h, p["head.weight"], p["head.bias"])


def teacher_targets(p, x_u8):
    """-> y [B, N, D]: end of the last top_k blocks on the unmasked image, CLS
    dropped, LN each (no affine, eps 1e-5), averaged, LN again."""
    outs = encoder(p, patch_tokens(p, x_u8) + POS)
    normed = [F.layer_norm(o[:, 1:], (D,), eps=1e-5) for o in rc.top_k(outs, CFG)]
    return F.layer_norm(sum(normed) / len(normed), (D,), eps=1e-5)


def d2v_loss(pred, y, mask):
    """Smooth-L1 (beta = loss_beta), mean over masked (b, n) x channels."""
    mb = mask.bool()
    return F.smooth_l1_loss(pred[:, 1:][mb], y[mb], beta=BETA)


# ---------------------------------------------------------------------------
# Training and the fixture.

def train(init, x_u8, mask):
    """The teacher is the EMA of every parameter."""
    def step(k, sp, tp, leaves):
        with torch.no_grad():
            y = teacher_targets(tp, x_u8)
        pred = student_forward(leaves, x_u8, mask)
        return d2v_loss(pred, y, mask), {"y": y, "pred": pred.detach()}

    def after(k, rec, keep, grads, sp, tp):
        err = (keep["pred"][:, 1:] - keep["y"])[mask.bool()]
        rec.setdefault("kink_margin", []).append(float((err.abs() - BETA).abs().min()))
        rec.setdefault("key_grad_zero", []).append(all(
            bool((grads["blocks.%d.attn.qkv.bias" % i][D:2 * D] == 0).all()) for i in range(NB)))
    return rc.train(CFG, init, step, decayed, after=after)


def build():
    rng = np.random.RandomState(SEED)
    init = init_params(rng)
    x_np, mask_np = make_inputs(rng)
    x_u8, mask, _ = rc.input_tensors(x_np, mask_np)
    rec = train(init, x_u8, mask)
    buf, t = rc.fixture(CFG, init, rec, rc.input_arrays(x_np, mask_np))
    return buf, t, (init, x_u8, mask, rec)


# ---------------------------------------------------------------------------
# Self-checks.

def block_ref(p, i, x):
    """The pre-LN LayerScale block by its formulas (attention head by head from
    the stored [3D] bias, key third 0)."""
    pre = "blocks.%d." % i
    eps = CFG["norm_eps"]
    x = x + p[pre + "gamma_1"] * rc.attn_ref(
        p, pre, ln_ref(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps), H)
    r = ln_ref(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps)
    f = gelu_ref(r @ p[pre + "mlp.fc1.weight"].t() + p[pre + "mlp.fc1.bias"]) \
        @ p[pre + "mlp.fc2.weight"].t() + p[pre + "mlp.fc2.bias"]
    return x + p[pre + "gamma_2"] * f


def patch_ref(p, x_u8):
    return rc.patch_ref(p, x_u8, CFG)


def check_twins(init, x_u8):
    rc.check_sincos(POS, G, D)

    # Attention: torch's own multi-head attention with the stored [q;k;v] layout
    # and bias (key third 0), and the head-by-head formula.
    rc.check_attention(init, CFG, 5, attention)

    # GELU and LayerNorm: formulas.
    z = torch.randn(4, 6, D, generator=torch.Generator().manual_seed(2))
    rc.check_gelu(z)
    rc.check_layer_norm(z)

    # Pre-LN LayerScale block by the formulas.
    xb = torch.randn(2, N + 1, D, generator=torch.Generator().manual_seed(3))
    check(all(close(block(init, i, xb), block_ref(init, i, xb), 1e-12, 1e-12) for i in range(NB)),
          "every block equals the pre-LN LayerScale formula x += g1*attn(LN1 x); x += g2*mlp(LN2 x)")

    # Patch embedding: explicit patch gather + matmul, row-major token order.
    check(close(patch_tokens(init, x_u8), patch_ref(init, x_u8), 1e-12, 1e-12),
          "patch embedding equals explicit per-patch matmul (row-major)")


def check_inputs(x_np, mask_np):
    check(mask_np.shape == (B, N) and set(np.unique(mask_np)) <= {0, 1},
          "mask shape [B, N], values 0/1")
    check(list(mask_np.sum(1)) == NMASK, "masked per image %s (want %s)"
          % (list(mask_np.sum(1)), NMASK))
    rc.check_image_input(x_np, CFG, B)


def check_init(init):
    check(all(bool((init["blocks.%d.attn.qkv.bias" % i][D:2 * D] == 0).all()) for i in range(NB)),
          "key third of every initial qkv bias is exactly 0")
    check(all(bool((init["blocks.%d.attn.qkv.bias" % i][:D] != 0).all()
                   and (init["blocks.%d.attn.qkv.bias" % i][2 * D:] != 0).all()) for i in range(NB)),
          "query and value biases are non-zero")
    g = torch.cat([init["blocks.%d.gamma_%d" % (i, j)] for i in range(NB) for j in (1, 2)])
    check(abs(float(g.mean()) - 0.1) < 0.01 and 0.04 < float(g.std()) < 0.06,
          "gammas ~ 0.1 + 0.05 N(0,1) (mean %.4f, std %.4f)" % (float(g.mean()), float(g.std())))
    dec = sorted(n for n, t in init.items() if decayed(n, t))
    want = sorted(["patch_embed.weight", "cls_token", "mask_token", "head.weight"]
                  + ["blocks.%d.%s.weight" % (i, s) for i in range(NB)
                     for s in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")])
    check(dec == want, "weight decay on %d tensors: patch_embed.weight, cls_token, mask_token, "
          "head.weight and the block matrices (not gammas, norms, biases)" % len(dec))


def check_forward(init, x_u8, mask, rec):
    y = teacher_targets(init, x_u8)
    pred = student_forward(init, x_u8, mask)
    rc.check_recomputed(rec, y, pred)
    check(tuple(pred.shape) == (B, N + 1, D) and tuple(y.shape) == (B, N, D),
          "pred [B, N+1, D], y [B, N, D]")

    # Loss by hand: l(e) = 0.5 e^2 / beta for |e| < beta, else |e| - 0.5 beta,
    # mean over every masked (b, n) and every channel.
    tot, cnt, quad, lin = 0.0, 0, 0, 0
    for b in range(B):
        for n in range(N):
            if not mask[b, n]:
                continue
            for d in range(D):
                e = float(pred[b, 1 + n, d]) - float(y[b, n, d])
                if abs(e) < BETA:
                    tot += 0.5 * e * e / BETA
                    quad += 1
                else:
                    tot += abs(e) - 0.5 * BETA
                    lin += 1
                cnt += 1
    loss0 = float(rec["loss"])
    check(cnt == sum(NMASK) * D, "masked elements %d = (5 + 7 + 9) x D" % cnt)
    check(abs(tot / cnt - loss0) < 1e-12 * max(1.0, abs(loss0)),
          "step-0 loss %.12f recomputed by hand (%.12f)" % (loss0, tot / cnt))
    check(quad > 0 and lin > 0, "both Smooth-L1 branches are used (%d quadratic, %d linear)"
          % (quad, lin))
    check(min(rec["kink_margin"]) > 1e-4,
          "no | |e| - beta | below 1e-4 at any step (min %.3g)" % min(rec["kink_margin"]))

    # Targets by hand: teacher per image on the unmasked tokens, end of blocks
    # 1 and 2 (the last top_k = 2 of 3), CLS dropped, LN, mean, LN.
    ys = []
    for b in range(B):
        h = torch.cat([init["cls_token"][0], patch_ref(init, x_u8[b:b + 1])[0] + POS])
        outs = []
        for i in range(NB):
            h = block_ref(init, i, h)
            outs.append(h)
        ys.append(ln_ref((ln_ref(outs[1][1:]) + ln_ref(outs[2][1:])) / 2))
    check(close(torch.stack(ys), rec["y"], 1e-12, 1e-12),
          "y = LN(mean(LN(end of block 1), LN(end of block 2))), CLS dropped, per image")

    # Student by hand: mask token at the masked patches, then sin-cos, CLS,
    # blocks, norm, head.
    ps = []
    for b in range(B):
        t = patch_ref(init, x_u8[b:b + 1])[0]
        t = torch.where(mask[b].bool().unsqueeze(-1), init["mask_token"][0, 0].expand(N, D), t)
        h = torch.cat([init["cls_token"][0], t + POS])
        for i in range(NB):
            h = block_ref(init, i, h)
        h = ln_ref(h, init["norm.weight"], init["norm.bias"], CFG["norm_eps"])
        ps.append(h @ init["head.weight"].t() + init["head.bias"])
    check(close(torch.stack(ps), pred, 1e-12, 1e-12),
          "pred = head(norm(blocks([cls; where(mask, mask_token, patch) + sincos])))")

    # Pixels of a masked patch do not reach the student, but do reach the teacher.
    b = 2
    n = int(torch.nonzero(mask[b])[0])
    r, c = divmod(n, G)
    x2 = x_u8.clone()
    x2[b, :, r * P:(r + 1) * P, c * P:(c + 1) * P] = 255 - x2[b, :, r * P:(r + 1) * P, c * P:(c + 1) * P]
    check(close(student_forward(init, x2, mask), pred, 0, 0),
          "pixels of a masked patch do not reach the student")
    check(not close(teacher_targets(init, x2), y, 1e-6, 1e-6), "... but do reach the teacher")
    # Position reaches the mask tokens: the masked predictions of one image differ.
    pm = pred[b, 1:][mask[b].bool()]
    check(float((pm - pm[0]).abs().max()) > 1e-3,
          "the masked positions of an image get different predictions (sin-cos after the mask token)")
    # The key bias has no effect (softmax is shift-invariant over keys): a random
    # key bias fed through the full [3D] bias changes the loss only by rounding.
    kb = dict(init)
    for i in range(NB):
        nm = "blocks.%d.attn.qkv.bias" % i
        kb[nm] = init[nm].clone()
        kb[nm][D:2 * D] = torch.randn(D, generator=torch.Generator().manual_seed(10 + i))
    l_full = float(d2v_loss(student_forward(kb, x_u8, mask, full_bias=True), y, mask))
    l_same = float(d2v_loss(student_forward(init, x_u8, mask, full_bias=True), y, mask))
    check(l_same == loss0 and abs(l_full - loss0) < 1e-13,
          "a key bias has no effect on the loss (full-bias forward: %.3g difference)"
          % abs(l_full - loss0))


def check_grads(init, x_u8, mask, rec):
    y = teacher_targets(init, x_u8).detach()

    def loss_of(p):
        return d2v_loss(student_forward(p, x_u8, mask), y, mask)
    names = ["mask_token", "cls_token", "patch_embed.bias", "blocks.0.attn.qkv.bias",
             "blocks.0.norm1.weight", "blocks.1.gamma_1", "blocks.2.gamma_2",
             "blocks.1.norm2.bias", "norm.weight", "head.weight", "head.bias"]
    check(rc.gradcheck_loss(init, names, loss_of, atol=1e-9),
          "torch.autograd.gradcheck of the loss on %d parameters (%d entries; "
          "mask_token, gammas, head.weight included)" % (len(names), sum(init[n].numel() for n in names)))
    g = rec["grad"]
    check(all(rec["key_grad_zero"]), "key third of every qkv bias gradient is exactly 0 at every step")
    check(all(bool((g["blocks.%d.attn.qkv.bias" % i][:D] != 0).all()
                   and (g["blocks.%d.attn.qkv.bias" % i][2 * D:] != 0).all()) for i in range(NB)),
          "query and value bias gradients are non-zero")
    rc.check_grads_nonzero(rec, init)

    # Central differences on single entries of every tensor of rank > 1 and of
    # the gammas, against the stored step-0 gradient (float64).
    def picks(n, t, gn, rs):
        if t.dim() < 2 and ".gamma_" not in n:
            return []
        return [tuple(int(rs.randint(s)) for s in t.shape) for _ in range(3)]
    worst, count = rc.central_diff(init, g, loss_of, picks)
    check(worst < 1e-5, "central differences match autograd on %d entries of every weight "
          "tensor and gamma (worst relative error %.2e)" % (count, worst))


def main():
    buf, tensors, (init, x_u8, mask, rec) = build()

    check_inputs(tensors["input.x"], tensors["input.mask"])
    check_init(init)
    check(rec["teacher_equal_at_0"], "teacher equals student at step 0")
    check_twins(init, x_u8)
    check_forward(init, x_u8, mask, rec)
    check_grads(init, x_u8, mask, rec)

    rc.check_schedules(rec)
    clipped = [k for k, c in enumerate(rec["clipped"]) if c]
    print("note clipping at clip_norm %.1f: steps %s (grad norms %s)"
          % (CFG["clip_norm"], clipped, " ".join("%.4f" % v for v in rec["grad_norm"])))
    st, te = rec["student"], rec["teacher"]
    rc.check_moved(rec, init)
    check(all(bool((st["blocks.%d.attn.qkv.bias" % i][D:2 * D] == 0).all()
                   and (te["blocks.%d.attn.qkv.bias" % i][D:2 * D] == 0).all()) for i in range(NB)),
          "key third of every qkv bias is still exactly 0 (student and teacher)")
    check(rc.ema_moved(rec, init, init),
          "every teacher parameter (EMA of all) differs from the student and from the start")
    check(sorted(te) == sorted(init), "teacher holds every parameter")
    check(rec["losses"][0] == float(rec["loss"]), "losses[0] is the step-0 loss")

    back = rc.check_file(CFG, buf, tensors, build, 1024 * 1024, "1 MiB")
    rc.check_tensor_names(back, init, ["input.x", "input.mask"])
    rc.summary(rec)
    rc.finish("v1_image.py", OUT, buf, tensors)


if __name__ == "__main__":
    main()
