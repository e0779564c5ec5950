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

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(gradcheck and central differences of the loss gradient, the key bias
gradient exactly 0, mask counts, teacher == student at step 0, the loss and the
targets recomputed by hand, independent twins of attention, blocks, sin-cos,
patch embedding and norms, determinism, a read-back of the file) and exits
non-zero when a check fails.
"""

import collections
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed reduction order: identical bytes on every run

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
HD = D // H
FF = CFG["mlp_dim"]
NB = CFG["prenet_depth"] + CFG["depth"]
BETA = float(CFG["loss_beta"])
NMASK = [5, 7, 9]                       # masked tokens of image 0, 1, 2 (README)
STEPS = CFG["max_update"]
SEED = 20240607

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "v1_image_tiny.safetensors")

FAILED = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def close(a, b, rtol, atol):
    return bool(torch.allclose(a, b, rtol=rtol, atol=atol))


# ---------------------------------------------------------------------------
# Parameters: names, shapes, layouts of the README; values drawn once.

def param_shapes():
    s = collections.OrderedDict()
    s["patch_embed.weight"] = (D, C, P, P)
    s["patch_embed.bias"] = (D,)
    s["cls_token"] = (1, 1, D)
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


def f32(a):
    """Round to float32 and come back: what is stored is what is computed with."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def init_params(rng):
    """As v2_image: Linear/conv weights N(0, 1/fan_in); biases N(0, 0.02);
    LayerNorm weight 1 + N(0, 0.1), bias N(0, 0.05); cls_token and mask_token
    N(0, 1). LayerScale gammas 0.1 + 0.05 N(0, 1). The key third of every qkv
    bias (rows D .. 2D-1) is exactly 0 (BEiT has no key bias)."""
    out = collections.OrderedDict()
    for name, shape in param_shapes().items():
        z = rng.standard_normal(shape)
        if name in ("cls_token", "mask_token"):
            v = z
        elif ".gamma_" in name:
            v = CFG["layer_scale"] + 0.05 * z
        elif "norm" in name and name.endswith(".weight"):
            v = 1.0 + 0.1 * z
        elif "norm" in name and name.endswith(".bias"):
            v = 0.05 * z
        elif name.endswith(".bias"):
            v = 0.02 * z
            if name.endswith("attn.qkv.bias"):
                v[D:2 * D] = 0.0
        else:
            fan_in = int(np.prod(shape[1:]))
            v = z / math.sqrt(fan_in)
        out[name] = torch.tensor(f32(v))
    return out


def decayed(name, t):
    return t.dim() > 1 and not name.endswith(".bias")


# ---------------------------------------------------------------------------
# Inputs.

def make_inputs(rng):
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    img0 = 30 + 9 * xx + 5 * yy + 25 * np.sin(yy / 2.3) + rng.normal(0, 10, (S, S))
    r = np.sqrt((xx - 9.5) ** 2 + (yy - 6.0) ** 2)
    img1 = 120 + 100 * np.cos(r / 2.7) - 3 * xx + rng.normal(0, 10, (S, S))
    img2 = 128 + 70 * np.sign(np.sin(xx / 1.7) * np.sin(yy / 2.1)) + 4 * (yy - xx) \
        + rng.normal(0, 12, (S, S))
    x = np.stack([img0, img1, img2])[:, None]
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)            # [B, C, S, S]

    mask = np.zeros((B, N), dtype=np.uint8)
    for b, k in enumerate(NMASK):
        mask[b, rng.permutation(N)[:k]] = 1                      # [B, N]
    return x, mask


# ---------------------------------------------------------------------------
# Model.

def sincos_2d():
    """[N, D]: first D/2 dims encode the column, last D/2 the row; each half is
    [sin(p*w_k), cos(p*w_k)], w_k = 10000^(-k/(D/4)), k = 0..D/4-1."""
    q = D // 4
    omega = torch.tensor([10000.0 ** (-k / q) for k in range(q)])
    tab = torch.zeros(N, D)
    for n in range(N):
        row, col = divmod(n, G)
        for half, pos in ((0, col), (1, row)):
            a = pos * omega
            tab[n, half * D // 2: half * D // 2 + q] = torch.sin(a)
            tab[n, half * D // 2 + q: (half + 1) * D // 2] = torch.cos(a)
    return tab


POS = sincos_2d()


def patch_tokens(p, x_u8):
    """u8 [B, C, S, S] -> patch embeddings [B, N, D] (row-major grid, no positions)."""
    mean = torch.tensor(CFG["mean"]).view(1, C, 1, 1)
    std = torch.tensor(CFG["std"]).view(1, C, 1, 1)
    x = (x_u8.double() / 255.0 - mean) / std
    t = F.conv2d(x, p["patch_embed.weight"], p["patch_embed.bias"], stride=P)
    return t.flatten(2).transpose(1, 2)


def qkv_bias(p, pre):
    """BEiT's cat(q_bias, zeros, v_bias): the key third never enters the graph,
    so its gradient is exactly 0 (and it is exactly 0 in the weights anyway)."""
    b = p[pre + "attn.qkv.bias"]
    return torch.cat([b[:D], torch.zeros(D), b[2 * D:]])


def attention(p, pre, x, full_bias=False):
    """x [R, T, D] -> proj(attn(qkv(x))) [R, T, D]. No position bias."""
    R, T, _ = x.shape
    bias = p[pre + "attn.qkv.bias"] if full_bias else qkv_bias(p, pre)
    qkv = F.linear(x, p[pre + "attn.qkv.weight"], bias)
    qkv = qkv.reshape(R, T, 3, H, HD).permute(2, 0, 3, 1, 4)     # [3, R, H, T, HD]
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = torch.softmax((q * HD ** -0.5) @ k.transpose(-2, -1), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(R, T, D)
    return F.linear(o, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])


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
    top = outs[CFG["prenet_depth"]:][-CFG["top_k"]:]
    normed = [F.layer_norm(o[:, 1:], (D,), eps=1e-5) for o in top]
    return F.layer_norm(sum(normed) / len(normed), (D,), eps=1e-5)


def d2v_loss(pred, y, mask):
    """Smooth-L1 (beta = loss_beta), mean over masked (b, n) x channels."""
    mb = mask.bool()
    return F.smooth_l1_loss(pred[:, 1:][mb], y[mb], beta=BETA)


# ---------------------------------------------------------------------------
# Schedules and the update.

def lr_at(k):
    lr, lo, w, T = CFG["lr"], CFG["min_lr"], CFG["warmup"], CFG["max_update"]
    if k < w:
        return lo + (lr - lo) * k / w
    return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * (k - w) / (T - w)))


def tau_at(t):
    a, e, n = CFG["ema_decay"], CFG["ema_end_decay"], CFG["ema_anneal_end_step"]
    return e - (e - a) * max(0.0, 1.0 - t / n)


def train(init, x_u8, mask):
    """STEPS updates. Returns a dict of everything the fixture stores."""
    names = list(init)
    sp = collections.OrderedDict((n, t.clone()) for n, t in init.items())
    tp = collections.OrderedDict((n, t.clone()) for n, t in init.items())
    m = {n: torch.zeros_like(t) for n, t in sp.items()}
    v = {n: torch.zeros_like(t) for n, t in sp.items()}
    b1, b2, eps = CFG["beta1"], CFG["beta2"], CFG["eps"]
    wd, clip = CFG["weight_decay"], CFG["clip_norm"]
    rec = {"losses": [], "grad_norm": [], "lr": [], "tau": [], "clipped": [],
           "kink_margin": [], "key_grad_zero": []}
    for k in range(STEPS):
        if k == 0:
            rec["teacher_equal_at_0"] = all(torch.equal(sp[n], tp[n]) for n in names)
        with torch.no_grad():
            y = teacher_targets(tp, x_u8)
        leaves = collections.OrderedDict((n, t.clone().requires_grad_(True))
                                         for n, t in sp.items())
        pred = student_forward(leaves, x_u8, mask)
        loss = d2v_loss(pred, y, mask)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        grads = {n: g.detach() for n, g in zip(names, grads)}
        err = (pred.detach()[:, 1:] - y)[mask.bool()]
        rec["kink_margin"].append(float((err.abs() - BETA).abs().min()))
        rec["key_grad_zero"].append(all(
            bool((grads["blocks.%d.attn.qkv.bias" % i][D:2 * D] == 0).all()) for i in range(NB)))
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        if k == 0:
            rec["y"], rec["pred"], rec["loss"] = y, pred.detach(), loss.detach()
            rec["grad"] = {n: g.clone() for n, g in grads.items()}
        rec["losses"].append(float(loss))
        rec["grad_norm"].append(norm)
        clipped = clip > 0 and norm > clip
        rec["clipped"].append(clipped)
        if clipped:
            coef = clip / (norm + 1e-6)
            grads = {n: g * coef for n, g in grads.items()}
        lr = lr_at(k)
        rec["lr"].append(lr)
        t = k + 1
        step_size = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for n in names:
            g = grads[n]
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            denom = v[n].sqrt() + eps
            p = sp[n]
            if decayed(n, p):
                p = p - lr * wd * p
            sp[n] = p - step_size * m[n] / denom
        tau = tau_at(t)
        rec["tau"].append(tau)
        for n in names:                                          # EMA of every parameter
            tp[n] = tau * tp[n] + (1 - tau) * sp[n]
    rec["student"], rec["teacher"] = sp, tp
    return rec


# ---------------------------------------------------------------------------
# safetensors.

def safetensors_bytes(tensors, metadata):
    header = collections.OrderedDict()
    header["__metadata__"] = metadata
    blobs, off = [], 0
    for name in sorted(tensors):
        a = tensors[name]
        if a.dtype == np.uint8:
            dt, raw = "U8", a.astype("|u1").tobytes()
        elif a.dtype == np.float32:
            dt, raw = "F32", a.astype("<f4").tobytes()
        else:
            raise TypeError("%s: %s" % (name, a.dtype))
        header[name] = collections.OrderedDict([
            ("dtype", dt), ("shape", list(a.shape)), ("data_offsets", [off, off + len(raw)])])
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * (-len(hj) % 8)
    return struct.pack("<Q", len(hj)) + hj + b"".join(blobs)


def safetensors_read(buf):
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__")
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        dt = {"U8": "|u1", "F32": "<f4"}[e["dtype"]]
        out[name] = np.frombuffer(buf[8 + n + b: 8 + n + end], dtype=dt).reshape(e["shape"])
    return meta, out


def to32(t):
    return np.asarray(t.detach().numpy(), dtype=np.float32)


def build():
    rng = np.random.RandomState(SEED)
    init = init_params(rng)
    x_np, mask_np = make_inputs(rng)
    x_u8 = torch.from_numpy(x_np)
    mask = torch.from_numpy(mask_np)
    rec = train(init, x_u8, mask)

    t = {}
    for n, v in init.items():
        t["student." + n] = to32(v)
    t["input.x"] = x_np
    t["input.mask"] = mask_np
    t["expect.y"] = to32(rec["y"])
    t["expect.pred"] = to32(rec["pred"])
    t["expect.loss"] = to32(rec["loss"].reshape(1))
    for n, g in rec["grad"].items():
        t["expect.grad." + n] = to32(g)
    for key in ("grad_norm", "lr", "tau", "losses"):
        t["expect." + key] = np.asarray(rec[key], dtype=np.float32)
    for n in init:
        t["expect.student." + n] = to32(rec["student"][n])
        t["expect.teacher." + n] = to32(rec["teacher"][n])
    meta = {"config": json.dumps(CFG, separators=(",", ":"))}
    return safetensors_bytes(t, meta), t, (init, x_u8, mask, rec)


# ---------------------------------------------------------------------------
# Self-checks.

def gelu_ref(z):
    return 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))


def ln_ref(z, w=None, b=None, eps=1e-5):
    """LayerNorm over the last dim by its formula."""
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    out = (z - mu) / torch.sqrt(var + eps)
    return out if w is None else out * w + b


def attn_ref(p, pre, x):
    """Attention head by head with explicit softmax, from the stored [3D] bias."""
    wq, wk, wv = p[pre + "attn.qkv.weight"].split(D)
    bq, bk, bv = p[pre + "attn.qkv.bias"].split(D)
    q, k, v = x @ wq.t() + bq, x @ wk.t() + bk, x @ wv.t() + bv
    heads = []
    for hh in range(H):
        sl = slice(hh * HD, (hh + 1) * HD)
        logit = q[..., sl] @ k[..., sl].transpose(-2, -1) / math.sqrt(HD)
        e = torch.exp(logit - logit.max(-1, keepdim=True).values)
        heads.append((e / e.sum(-1, keepdim=True)) @ v[..., sl])
    o = torch.cat(heads, -1)
    return o @ p[pre + "attn.proj.weight"].t() + p[pre + "attn.proj.bias"]


def block_ref(p, i, x):
    pre = "blocks.%d." % i
    eps = CFG["norm_eps"]
    x = x + p[pre + "gamma_1"] * attn_ref(
        p, pre, ln_ref(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps))
    r = ln_ref(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps)
    f = gelu_ref(r @ p[pre + "mlp.fc1.weight"].t() + p[pre + "mlp.fc1.bias"]) \
        @ p[pre + "mlp.fc2.weight"].t() + p[pre + "mlp.fc2.bias"]
    return x + p[pre + "gamma_2"] * f


def patch_ref(p, x_u8):
    """Explicit per-patch matmul, row-major token order. -> [B, N, D]."""
    x = (x_u8.double() / 255.0 - 0.5) / 0.25
    tok = torch.zeros(x.shape[0], N, D)
    w = p["patch_embed.weight"].reshape(D, -1)
    for b in range(x.shape[0]):
        for n in range(N):
            r, c = divmod(n, G)
            tok[b, n] = w @ x[b, :, r * P:(r + 1) * P, c * P:(c + 1) * P].reshape(-1) \
                + p["patch_embed.bias"]
    return tok


def check_twins(init, x_u8):
    # sin-cos: the MAE construction (meshgrid with w first, numpy).
    gw, gh = np.meshgrid(np.arange(G, dtype=np.float64), np.arange(G, dtype=np.float64))

    def one_d(dim, pos):
        om = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        o = np.einsum("m,d->md", pos.reshape(-1), om)
        return np.concatenate([np.sin(o), np.cos(o)], axis=1)
    mae = np.concatenate([one_d(D // 2, gw), one_d(D // 2, gh)], axis=1)
    check(np.abs(mae - POS.numpy()).max() < 1e-14, "sin-cos table equals the MAE meshgrid construction")

    # Attention: torch's own multi-head attention with the stored [q;k;v] layout
    # and bias (key third 0), and the head-by-head formula.
    xs = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(1))
    pre = "blocks.1."
    ref, _ = F.multi_head_attention_forward(
        xs.transpose(0, 1), xs.transpose(0, 1), xs.transpose(0, 1), D, H,
        init[pre + "attn.qkv.weight"], init[pre + "attn.qkv.bias"], None, None, False, 0.0,
        init[pre + "attn.proj.weight"], init[pre + "attn.proj.bias"],
        training=False, need_weights=False)
    got = attention(init, pre, xs)
    check(close(got, ref.transpose(0, 1), 1e-12, 1e-12) and close(got, attn_ref(init, pre, xs), 1e-12, 1e-12),
          "attention equals F.multi_head_attention_forward and the head-by-head formula")

    # GELU and LayerNorm: formulas.
    z = torch.randn(4, 6, D, generator=torch.Generator().manual_seed(2))
    check(close(F.gelu(z), gelu_ref(z), 1e-14, 1e-14), "gelu is the exact erf form")
    check(close(F.layer_norm(z, (D,), eps=1e-5), ln_ref(z), 1e-12, 1e-12),
          "LayerNorm (no affine, eps 1e-5) equals the formula")

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
    check(x_np.dtype == np.uint8 and x_np.shape == (B, C, S, S)
          and all(len(np.unique(x_np[b])) > 20 for b in range(B)),
          "input.x u8 [B, C, S, S], not constant")


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
    check(close(y, rec["y"], 0, 0) and close(pred, rec["pred"], 0, 0),
          "step-0 y and pred recomputed from the initial weights")
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
    names = ["mask_token", "cls_token", "patch_embed.bias", "blocks.0.attn.qkv.bias",
             "blocks.0.norm1.weight", "blocks.1.gamma_1", "blocks.2.gamma_2",
             "blocks.1.norm2.bias", "norm.weight", "head.weight", "head.bias"]

    def f(*ts):
        p = dict(init)
        p.update(zip(names, ts))
        return d2v_loss(student_forward(p, x_u8, mask), y, mask)
    ins = tuple(init[n].clone().requires_grad_(True) for n in names)
    ok = torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-9, rtol=1e-6, raise_exception=False)
    check(bool(ok), "torch.autograd.gradcheck of the loss on %d parameters (%d entries; "
          "mask_token, gammas, head.weight included)" % (len(names), sum(init[n].numel() for n in names)))
    g = rec["grad"]
    check(all(rec["key_grad_zero"]), "key third of every qkv bias gradient is exactly 0 at every step")
    check(all(bool((g["blocks.%d.attn.qkv.bias" % i][:D] != 0).all()
                   and (g["blocks.%d.attn.qkv.bias" % i][2 * D:] != 0).all()) for i in range(NB)),
          "query and value bias gradients are non-zero")
    check(all(float(g[n].abs().max()) > 0 for n in init),
          "every parameter has a non-zero step-0 gradient")

    # Central differences on single entries of every tensor of rank > 1 and of
    # the gammas, against the stored step-0 gradient (float64).
    rs = np.random.RandomState(7)
    worst, count = 0.0, 0
    for n, t in init.items():
        if t.dim() < 2 and ".gamma_" not in n:
            continue
        for _ in range(3):
            i = tuple(int(rs.randint(s)) for s in t.shape)
            h = 1e-5
            lo, hi = dict(init), dict(init)
            lo[n] = t.clone()
            hi[n] = t.clone()
            lo[n][i] -= h
            hi[n][i] += h
            fd = (float(d2v_loss(student_forward(hi, x_u8, mask), y, mask))
                  - float(d2v_loss(student_forward(lo, x_u8, mask), y, mask))) / (2 * h)
            gi = float(g[n][i])
            err = abs(fd - gi) / max(1e-4, abs(gi))
            worst = max(worst, err)
            count += 1
            if err > 1e-5:
                print("     %s%s: fd %.10g autograd %.10g" % (n, i, fd, gi))
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

    lr_ref = [0.0, 5e-4, 1e-3, 7.5e-4, 2.5e-4]
    check(all(abs(a - b) < 1e-15 for a, b in zip(rec["lr"], lr_ref)), "lr schedule %s" % rec["lr"])
    tau_ref = [0.9225, 0.945, 0.9675, 0.99, 0.99]
    check(all(abs(a - b) < 1e-15 for a, b in zip(rec["tau"], tau_ref)), "tau schedule %s" % rec["tau"])
    clipped = [k for k, c in enumerate(rec["clipped"]) if c]
    print("note clipping at clip_norm %.1f: steps %s (grad norms %s)"
          % (CFG["clip_norm"], clipped, " ".join("%.4f" % v for v in rec["grad_norm"])))
    st, te = rec["student"], rec["teacher"]
    check(all(not torch.equal(st[n], init[n]) for n in init), "every student parameter moved")
    check(all(bool((st["blocks.%d.attn.qkv.bias" % i][D:2 * D] == 0).all()
                   and (te["blocks.%d.attn.qkv.bias" % i][D:2 * D] == 0).all()) for i in range(NB)),
          "key third of every qkv bias is still exactly 0 (student and teacher)")
    check(all(not torch.equal(te[n], st[n]) and not torch.equal(te[n], init[n]) for n in init),
          "every teacher parameter (EMA of all) differs from the student and from the start")
    check(sorted(te) == sorted(init), "teacher holds every parameter")
    check(rec["losses"][0] == float(rec["loss"]), "losses[0] is the step-0 loss")

    buf2 = build()[0]
    check(buf == buf2, "two builds give identical bytes")
    meta, back = safetensors_read(buf)
    check(json.loads(meta["config"]) == CFG and sorted(back) == sorted(tensors)
          and all(np.array_equal(back[n], tensors[n]) and back[n].dtype == tensors[n].dtype
                  for n in tensors),
          "safetensors read-back")
    want = (["student." + n for n in init] + ["input.x", "input.mask", "expect.y", "expect.pred",
            "expect.loss", "expect.grad_norm", "expect.lr", "expect.tau", "expect.losses"]
            + ["expect.%s.%s" % (k, n) for k in ("grad", "student", "teacher") for n in init])
    check(sorted(back) == sorted(want), "tensor names: %d, exactly the README's" % len(want))
    check(len(buf) < 1024 * 1024, "fixture size %d bytes < 1 MiB" % len(buf))

    print("loss0     ", "%.9f" % float(rec["loss"]))
    print("losses    ", " ".join("%.9f" % v for v in rec["losses"]))
    print("grad_norm ", " ".join("%.9f" % v for v in rec["grad_norm"]))
    print("lr        ", rec["lr"])
    print("tau       ", rec["tau"])

    if FAILED:
        print("v1_image.py: %d check(s) failed; %s not written" % (len(FAILED), OUT))
        sys.exit(1)
    with open(OUT, "wb") as fh:
        fh.write(buf)
    print("wrote %s (%d bytes, %d tensors)" % (OUT, len(buf), len(tensors)))


if __name__ == "__main__":
    main()
