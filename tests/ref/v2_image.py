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

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(finite-difference gradients, mask counts, teacher == student at step 0, loss
= sum of its terms, independent twins of attention, sin-cos and norms,
determinism, a read-back of the file) and exits non-zero when a check fails.
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
HD = D // H
FF = CFG["mlp_dim"]
NB = CFG["prenet_depth"] + CFG["depth"]
DD = CFG["decoder_dim"]
K = CFG["decoder_kernel"]
NMASK_ROW = 12                          # masked tokens per row (README)
STEPS = CFG["max_update"]
SEED = 20240521

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "v2_image_tiny.safetensors")

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
    s["context_norm.weight"] = (D,)
    s["context_norm.bias"] = (D,)
    for i in range(NB):
        p = "blocks.%d." % i
        s[p + "attn.qkv.weight"] = (3 * D, D)
        s[p + "attn.qkv.bias"] = (3 * D,)
        s[p + "attn.proj.weight"] = (D, D)
        s[p + "attn.proj.bias"] = (D,)
        s[p + "norm1.weight"] = (D,)
        s[p + "norm1.bias"] = (D,)
        s[p + "mlp.fc1.weight"] = (FF, D)
        s[p + "mlp.fc1.bias"] = (FF,)
        s[p + "mlp.fc2.weight"] = (D, FF)
        s[p + "mlp.fc2.bias"] = (D,)
        s[p + "norm2.weight"] = (D,)
        s[p + "norm2.bias"] = (D,)
    for j in range(CFG["decoder_layers"]):
        cin = D if j == 0 else DD
        p = "decoder.layers.%d.conv." % j
        s[p + "weight"] = (DD, cin // CFG["decoder_groups"], K, K)
        s[p + "bias"] = (DD,)
    s["decoder.proj.weight"] = (D, DD)
    s["decoder.proj.bias"] = (D,)
    return s


def f32(a):
    """Round to float32 and come back: what is stored is what is computed with."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def init_params(rng):
    """Linear/conv weights N(0, 1/fan_in) so attention, GELU and the decoder
    work away from their linear regions; biases N(0, 0.02); LayerNorm weight
    1 + N(0, 0.1), bias N(0, 0.05); cls_token N(0, 1)."""
    out = collections.OrderedDict()
    for name, shape in param_shapes().items():
        z = rng.standard_normal(shape)
        if name == "cls_token":
            v = z
        elif "norm" in name and name.endswith(".weight"):
            v = 1.0 + 0.1 * z
        elif "norm" in name and name.endswith(".bias"):
            v = 0.05 * z
        elif name.endswith(".bias"):
            v = 0.02 * z
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
    x = np.stack([img0, img1])[:, None]
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)            # [B, C, S, S]

    rows = []
    while len(rows) < B * M:
        keep = rng.permutation(N)[: N - NMASK_ROW]
        row = np.ones(N, dtype=np.uint8)
        row[keep] = 0
        if not any((row == q).all() for q in rows):
            rows.append(row)
    mask = np.stack(rows)                                        # [B*M, N]

    noise = [np.asarray(CFG["mask_noise_std"] * rng.standard_normal((B * M, N, D)),
                        dtype=np.float32) for _ in range(STEPS)]
    return x, mask, noise


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


def embed(p, x_u8):
    """u8 [B, C, S, S] -> tokens + sin-cos [B, N, D]."""
    mean = torch.tensor(CFG["mean"]).view(1, C, 1, 1)
    std = torch.tensor(CFG["std"]).view(1, C, 1, 1)
    x = (x_u8.double() / 255.0 - mean) / std
    t = F.conv2d(x, p["patch_embed.weight"], p["patch_embed.bias"], stride=P)
    return t.flatten(2).transpose(1, 2) + POS


def attention(p, pre, x):
    """x [R, T, D] -> proj(attn(qkv(x))) [R, T, D]."""
    R, T, _ = x.shape
    qkv = F.linear(x, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"])
    qkv = qkv.reshape(R, T, 3, H, HD).permute(2, 0, 3, 1, 4)     # [3, R, H, T, HD]
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = torch.softmax((q * HD ** -0.5) @ k.transpose(-2, -1), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(R, T, D)
    return F.linear(o, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])


def block(p, i, x):
    """Post-LN AltBlock. Returns (out, f) with f the FFN output before the residual."""
    pre = "blocks.%d." % i
    eps = CFG["norm_eps"]
    x = x + attention(p, pre, x)
    r = F.layer_norm(x, (D,), p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps)
    f = F.linear(F.gelu(F.linear(r, p[pre + "mlp.fc1.weight"], p[pre + "mlp.fc1.bias"])),
                 p[pre + "mlp.fc2.weight"], p[pre + "mlp.fc2.bias"])
    out = F.layer_norm(r + f, (D,), p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps)
    return out, f


def encoder(p, tokens):
    """tokens [R, T, D] (no CLS) -> (h [R, 1+T, D], FFN outputs of every block)."""
    R = tokens.shape[0]
    h = torch.cat([p["cls_token"].expand(R, 1, D), tokens], dim=1)
    h = F.layer_norm(h, (D,), p["context_norm.weight"], p["context_norm.bias"],
                     CFG["norm_eps"])
    fs = []
    for i in range(NB):
        h, f = block(p, i, h)
        fs.append(f)
    return h, fs


def channel_ln(z):
    """LayerNorm over channels at every pixel, no affine, eps 1e-5. z [R, Ch, G, G]."""
    return F.layer_norm(z.permute(0, 2, 3, 1), (z.shape[1],), eps=1e-5).permute(0, 3, 1, 2)


def decoder(p, z):
    """z [R, N, D] -> pred [R, N, D]."""
    R = z.shape[0]
    z = z.transpose(1, 2).reshape(R, D, G, G)
    for j in range(CFG["decoder_layers"]):
        pre = "decoder.layers.%d.conv." % j
        y = F.conv2d(z, p[pre + "weight"], p[pre + "bias"], padding=K // 2,
                     groups=CFG["decoder_groups"])
        y = F.gelu(channel_ln(y))
        if CFG["decoder_residual"] and y.shape[1] == z.shape[1]:
            y = y + z
        z = y
    z = z.reshape(R, DD, N).transpose(1, 2)
    return F.linear(z, p["decoder.proj.weight"], p["decoder.proj.bias"])


def keep_index(mask):
    """mask u8 [R, N] -> ascending kept indices [R, N - 12]."""
    return torch.stack([torch.nonzero(row == 0).flatten() for row in mask])


def student_forward(p, x_u8, mask, noise):
    """-> pred [B*M, N, D], h_cls [B*M, D]."""
    x = embed(p, x_u8).repeat_interleave(M, dim=0)               # [B*M, N, D]
    idx = keep_index(mask)
    idx3 = idx.unsqueeze(-1).expand(-1, -1, D)
    h, _ = encoder(p, torch.gather(x, 1, idx3))
    placed = torch.zeros(B * M, N, D).scatter(1, idx3, h[:, 1:])
    z = torch.where(mask.bool().unsqueeze(-1), noise, placed)
    return decoder(p, z), h[:, 0]


def teacher_targets(p, x_u8):
    """-> y [B, N, D], target_cls [B, D]."""
    _, fs = encoder(p, embed(p, x_u8))
    top = fs[CFG["prenet_depth"]:][-CFG["top_k"]:]               # main blocks only
    normed = [F.instance_norm(f[:, 1:].transpose(1, 2), eps=1e-5).transpose(1, 2)
              for f in top]
    y = F.layer_norm(sum(normed) / len(normed), (D,), eps=1e-5)
    return y, y.mean(dim=1)


def loss_scale():
    return CFG["loss_scale"] if CFG["loss_scale"] else 1.0 / math.sqrt(D)


def d2v_loss(pred, h_cls, y, tcls, mask):
    s = loss_scale()
    mb = mask.bool()
    n_mask = int(mb.sum())
    per_tok = (s * (pred - y.repeat_interleave(M, 0)) ** 2).sum(-1)     # [B*M, N]
    reg = (per_tok * mb).sum()
    cls = CFG["cls_loss"] * n_mask * (s * (h_cls - tcls.repeat_interleave(M, 0)) ** 2).sum()
    return (reg + cls) / n_mask


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


def train(init, x_u8, mask, noises):
    """STEPS updates. Returns a dict of everything the fixture stores."""
    names = list(init)
    sp = collections.OrderedDict((n, t.clone()) for n, t in init.items())
    tp = collections.OrderedDict((n, t.clone()) for n, t in init.items())
    m = {n: torch.zeros_like(t) for n, t in sp.items()}
    v = {n: torch.zeros_like(t) for n, t in sp.items()}
    b1, b2, eps = CFG["beta1"], CFG["beta2"], CFG["eps"]
    wd, clip = CFG["weight_decay"], CFG["clip_norm"]
    rec = {"losses": [], "grad_norm": [], "lr": [], "tau": [], "clipped": []}
    for k in range(STEPS):
        if k == 0:
            rec["teacher_equal_at_0"] = all(torch.equal(sp[n], tp[n]) for n in names)
        with torch.no_grad():
            y, tcls = teacher_targets(tp, x_u8)
        leaves = collections.OrderedDict((n, t.clone().requires_grad_(True))
                                         for n, t in sp.items())
        pred, h_cls = student_forward(leaves, x_u8, mask, noises[k])
        loss = d2v_loss(pred, h_cls, y, tcls, mask)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        grads = {n: g.detach() for n, g in zip(names, grads)}
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        if k == 0:
            rec["y"], rec["target_cls"] = y, tcls
            rec["pred"], rec["h_cls"], rec["loss"] = pred.detach(), h_cls.detach(), loss.detach()
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
        for n in names:
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
    x_np, mask_np, noise_np = make_inputs(rng)
    x_u8 = torch.from_numpy(x_np)
    mask = torch.from_numpy(mask_np)
    noises = [torch.from_numpy(a.astype(np.float64)) for a in noise_np]
    rec = train(init, x_u8, mask, noises)

    t = {}
    for n, v in init.items():
        t["student." + n] = to32(v)
    t["input.x"] = x_np
    t["input.mask"] = mask_np
    for k, a in enumerate(noise_np):
        t["input.noise.%d" % k] = a
    t["expect.y"] = to32(rec["y"])
    t["expect.target_cls"] = to32(rec["target_cls"])
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
    return safetensors_bytes(t, meta), t, (init, x_u8, mask, noises, rec)


# ---------------------------------------------------------------------------
# Self-checks.

def check_twins(init, x_u8):
    # sin-cos: the MAE construction (meshgrid with w first, numpy).
    gw, gh = np.meshgrid(np.arange(G, dtype=np.float64), np.arange(G, dtype=np.float64))

    def one_d(dim, pos):
        om = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        o = np.einsum("m,d->md", pos.reshape(-1), om)
        return np.concatenate([np.sin(o), np.cos(o)], axis=1)
    mae = np.concatenate([one_d(D // 2, gw), one_d(D // 2, gh)], axis=1)
    check(np.abs(mae - POS.numpy()).max() < 1e-14, "sin-cos table equals the MAE meshgrid construction")

    # Attention: torch's own multi-head attention with the same [q;k;v] layout.
    xs = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(1))
    pre = "blocks.1."
    ref, _ = F.multi_head_attention_forward(
        xs.transpose(0, 1), xs.transpose(0, 1), xs.transpose(0, 1), D, H,
        init[pre + "attn.qkv.weight"], init[pre + "attn.qkv.bias"], None, None, False, 0.0,
        init[pre + "attn.proj.weight"], init[pre + "attn.proj.bias"],
        training=False, need_weights=False)
    check(close(attention(init, pre, xs), ref.transpose(0, 1), 1e-12, 1e-12),
          "attention equals F.multi_head_attention_forward")

    # GELU (erf), channel LayerNorm, instance norm: explicit formulas.
    z = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(2))
    check(close(F.gelu(z), 0.5 * z * (1 + torch.erf(z / math.sqrt(2))), 1e-14, 1e-14),
          "gelu is the exact erf form")
    mu = z.mean(1, keepdim=True)
    var = ((z - mu) ** 2).mean(1, keepdim=True)
    check(close(channel_ln(z), (z - mu) / torch.sqrt(var + 1e-5), 1e-12, 1e-12),
          "decoder LayerNorm over channels equals the formula")
    a = torch.randn(2, N, D, generator=torch.Generator().manual_seed(3))
    mu = a.mean(1, keepdim=True)
    var = ((a - mu) ** 2).mean(1, keepdim=True)
    check(close(F.instance_norm(a.transpose(1, 2), eps=1e-5).transpose(1, 2),
                (a - mu) / torch.sqrt(var + 1e-5), 1e-12, 1e-12),
          "instance norm over positions (biased variance) equals the formula")

    # Patch embedding: explicit patch gather + matmul, row-major token order.
    x = (x_u8.double() / 255.0 - 0.5) / 0.25
    tok = torch.zeros(B, N, D)
    w = init["patch_embed.weight"].reshape(D, -1)
    for b in range(B):
        for n in range(N):
            r, c = divmod(n, G)
            tok[b, n] = w @ x[b, :, r * P:(r + 1) * P, c * P:(c + 1) * P].reshape(-1) \
                + init["patch_embed.bias"]
    check(close(embed(init, x_u8), tok + POS, 1e-12, 1e-12),
          "patch embedding equals explicit per-patch matmul (row-major)")


def check_inputs(x_np, mask_np, noise_np):
    check(mask_np.shape == (B * M, N) and set(np.unique(mask_np)) <= {0, 1},
          "mask shape [B*M, N], values 0/1")
    check(bool((mask_np.sum(1) == NMASK_ROW).all()), "exactly 12 masked per row")
    check(len({r.tobytes() for r in mask_np}) == B * M, "all mask rows differ")
    check(x_np.dtype == np.uint8 and x_np.shape == (B, C, S, S)
          and all(len(np.unique(x_np[b])) > 20 for b in range(B)),
          "input.x u8 [B, C, S, S], not constant")
    sd = float(np.std(np.stack(noise_np)))
    check(0.009 < sd < 0.011 and len(noise_np) == STEPS, "noise std ~0.01 (%.5f)" % sd)


def check_loss_terms(init, x_u8, mask, noise, rec):
    y, tcls = teacher_targets(init, x_u8)
    pred, h_cls = student_forward(init, x_u8, mask, noise)
    s = 1.0 / math.sqrt(D)
    n_mask = 0
    reg = 0.0
    for r in range(B * M):
        for n in range(N):
            if mask[r, n]:
                n_mask += 1
                reg += s * float(((pred[r, n] - y[r // M, n]) ** 2).sum())
    cls = 0.0
    for r in range(B * M):
        cls += s * float(((h_cls[r] - y[r // M].mean(0)) ** 2).sum())
    total = reg / n_mask + CFG["cls_loss"] * cls
    loss0 = float(rec["loss"])
    check(n_mask == B * M * NMASK_ROW, "N_mask = %d" % n_mask)
    check(abs(total - loss0) < 1e-12 * max(1.0, abs(loss0)),
          "step-0 loss %.12f = regression %.12f + cls %.12f" % (loss0, reg / n_mask,
                                                               CFG["cls_loss"] * cls))
    check(close(y, rec["y"], 0, 0) and close(pred, rec["pred"], 0, 0),
          "step-0 y and pred recomputed from the initial weights")
    # Decoder input really carries the noise at masked slots only: changing
    # the noise at an unmasked slot must not change pred.
    nz = noise.clone()
    r, n = 0, int(torch.nonzero(mask[0] == 0)[0])
    nz[r, n] += 1.0
    p2, _ = student_forward(init, x_u8, mask, nz)
    check(close(p2, pred, 0, 0), "noise at unmasked slots is ignored")


def check_grads(init, x_u8, mask, noise, rec):
    y, tcls = teacher_targets(init, x_u8)
    y, tcls = y.detach(), tcls.detach()
    names = ["cls_token", "patch_embed.bias", "context_norm.weight", "blocks.0.attn.qkv.bias",
             "blocks.2.norm1.weight", "decoder.layers.0.conv.bias", "decoder.layers.1.conv.bias",
             "decoder.proj.bias"]

    def f(*ts):
        p = dict(init)
        p.update(zip(names, ts))
        pred, h_cls = student_forward(p, x_u8, mask, noise)
        return d2v_loss(pred, h_cls, y, tcls, mask)
    ins = tuple(init[n].clone().requires_grad_(True) for n in names)
    ok = torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-8, rtol=1e-6, raise_exception=False)
    check(bool(ok), "torch.autograd.gradcheck of the loss on %d parameters" % len(names))

    # Central differences on single entries of the big weights, compared with
    # the stored step-0 gradient (float64 before the cast).
    rs = np.random.RandomState(7)
    worst = 0.0
    for n, t in init.items():
        if t.dim() < 2:
            continue
        for _ in range(2):
            i = tuple(int(rs.randint(s)) for s in t.shape)
            h = 1e-5
            lo, hi = dict(init), dict(init)
            lo[n] = t.clone()
            hi[n] = t.clone()
            lo[n][i] -= h
            hi[n][i] += h
            fd = (float(d2v_loss(*student_forward(hi, x_u8, mask, noise), y, tcls, mask))
                  - float(d2v_loss(*student_forward(lo, x_u8, mask, noise), y, tcls, mask))) / (2 * h)
            g = float(rec["grad"][n][i])
            err = abs(fd - g) / max(1e-4, abs(g))
            worst = max(worst, err)
            if err > 1e-5:
                print("     %s%s: fd %.10g autograd %.10g" % (n, i, fd, g))
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

    lr_ref = [0.0, 5e-4, 1e-3, 7.5e-4, 2.5e-4]
    check(all(abs(a - b) < 1e-15 for a, b in zip(rec["lr"], lr_ref)), "lr schedule %s" % rec["lr"])
    tau_ref = [0.9225, 0.945, 0.9675, 0.99, 0.99]
    check(all(abs(a - b) < 1e-15 for a, b in zip(rec["tau"], tau_ref)), "tau schedule %s" % rec["tau"])
    check(any(rec["clipped"]), "clipping is exercised (steps %s)" %
          [k for k, c in enumerate(rec["clipped"]) if c])
    check(all(not torch.equal(rec["student"][n], init[n]) for n in init),
          "every student parameter moved")
    check(all(not torch.equal(rec["teacher"][n], rec["student"][n]) for n in init),
          "teacher differs from student after the updates")

    buf2 = build()[0]
    check(buf == buf2, "two builds give identical bytes")
    meta, back = safetensors_read(buf)
    check(json.loads(meta["config"]) == CFG and sorted(back) == sorted(tensors)
          and all(np.array_equal(back[n], tensors[n]) for n in tensors),
          "safetensors read-back")
    check(len(buf) < 2 * 1024 * 1024, "fixture size %d bytes < 2 MB" % len(buf))

    print("losses    ", " ".join("%.9f" % v for v in rec["losses"]))
    print("grad_norm ", " ".join("%.9f" % v for v in rec["grad_norm"]))
    print("lr        ", rec["lr"])
    print("tau       ", rec["tau"])

    if FAILED:
        print("v2_image.py: %d check(s) failed; %s not written" % (len(FAILED), OUT))
        sys.exit(1)
    with open(OUT, "wb") as fh:
        fh.write(buf)
    print("wrote %s (%d bytes, %d tensors)" % (OUT, len(buf), len(tensors)))


if __name__ == "__main__":
    main()
