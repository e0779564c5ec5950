#!/usr/bin/python3
"""PyTorch reference for the tiny data2vec 2.0 text model (tests/ref/README.md).

Written from ../../../shared/DATA2VEC.md and tests/ref/README.md only, never from
d2v's C code. Everything is computed in float64 and stored as float32 in
v2_text_tiny.safetensors next to this script:

  student.<name>           initial weights (the teacher starts equal)
  input.x, input.mask      i32 [B, N] token ids, u8 [B*M, N] (1 = masked)
  input.noise.<k>          f32 [B*M, N, D], decoder noise of step k
  expect.y, expect.pred, expect.loss                        step 0
  expect.grad.<name>       step-0 gradients, before clipping
  expect.grad_norm, expect.lr, expect.tau, expect.losses    [STEPS]
  expect.student.<name>    after STEPS updates, every parameter
  expect.teacher.<name>    after STEPS updates, every non-decoder parameter
                           (embed_* are shared: equal to the student's)

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(finite-difference gradients, mask counts, teacher == student at step 0, the
loss recomputed term by term, independent twins of attention, embedding,
decoder and norms, determinism, a read-back of the file) and exits non-zero
when a check fails.
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
    ("modality", "text"), ("objective", "v2"),
    ("vocab", 50), ("max_positions", 16),
    ("dim", 32), ("heads", 2), ("mlp_dim", 128),
    ("prenet_depth", 0), ("depth", 3), ("top_k", 2),
    ("norm_eps", 1e-5),
    ("decoder_dim", 32), ("decoder_kernel", 5), ("decoder_layers", 2),
    ("decoder_groups", 1), ("decoder_residual", False), ("decoder_proj_layers", 2),
    ("clone", 3),
    ("mask_noise_std", 0.01), ("cls_loss", 0), ("loss_scale", 1),
    ("target_final_norm", "none"),
    ("embed_dropout", 0), ("encoder_dropout", 0), ("attention_dropout", 0),
    ("activation_dropout", 0), ("post_mlp_drop", 0), ("input_dropout", 0),
    ("context_dropout", 0), ("layerdrop", 0), ("drop_path", 0),
    ("lr", 1e-3), ("min_lr", 0), ("warmup", 2), ("max_update", 5),
    ("beta1", 0.9), ("beta2", 0.98), ("eps", 1e-6), ("weight_decay", 0.01),
    ("clip_norm", 1.0),
    ("ema_decay", 0.9), ("ema_end_decay", 0.99), ("ema_anneal_end_step", 4),
])

B = 2                                   # samples per batch
M = CFG["clone"]                        # masked copies per sample
N = 12                                  # tokens per sample (README)
V_TOK = CFG["vocab"]
NPOS = CFG["max_positions"] + 2         # fairseq: max_positions + pad_idx + 1
PAD = 1                                 # fairseq <pad>; never drawn (see README note)
D = CFG["dim"]
H = CFG["heads"]
HD = D // H
FF = CFG["mlp_dim"]
NB = CFG["prenet_depth"] + CFG["depth"]
DD = CFG["decoder_dim"]
K = CFG["decoder_kernel"]
NMASK_ROW = 5                           # masked tokens per row (README)
STEPS = CFG["max_update"]
SEED = 20240607

SHARED = ("embed_tokens.", "embed_positions.", "embed_norm.")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "v2_text_tiny.safetensors")

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
    s["embed_tokens.weight"] = (V_TOK, D)
    s["embed_positions.weight"] = (NPOS, D)
    s["embed_norm.weight"] = (D,)
    s["embed_norm.bias"] = (D,)
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
        s[p + "weight"] = (DD, cin // CFG["decoder_groups"], K)
        s[p + "bias"] = (DD,)
    s["decoder.proj.0.weight"] = (2 * DD, DD)
    s["decoder.proj.0.bias"] = (2 * DD,)
    s["decoder.proj.1.weight"] = (D, 2 * DD)
    s["decoder.proj.1.bias"] = (D,)
    return s


def is_shared(name):
    return name.startswith(SHARED)


def in_teacher(name):
    return not name.startswith("decoder.")


def f32(a):
    """Round to float32 and come back: what is stored is what is computed with."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def init_params(rng):
    """Linear/conv weights N(0, 1/fan_in) so attention, GELU and the decoder
    work away from their linear regions; biases N(0, 0.02); LayerNorm weight
    1 + N(0, 0.1), bias N(0, 0.05); both embedding tables N(0, 1) (every row
    random; position rows 0 and 1 are never used)."""
    out = collections.OrderedDict()
    for name, shape in param_shapes().items():
        z = rng.standard_normal(shape)
        if name.startswith(("embed_tokens.", "embed_positions.")):
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
    ids = np.array([i for i in range(V_TOK) if i != PAD])
    x = ids[rng.randint(0, len(ids), size=(B, N))].astype(np.int32)     # [B, N]

    # base.py random_masking: uniform noise per token, argsort, keep the first
    # len_keep = N - 5, mask the rest.
    rows = []
    while len(rows) < B * M:
        keep = np.argsort(rng.rand(N), kind="stable")[: N - NMASK_ROW]
        row = np.ones(N, dtype=np.uint8)
        row[keep] = 0
        if not any((row == q).all() for q in rows):
            rows.append(row)
    mask = np.stack(rows)                                                # [B*M, N]

    noise = [np.asarray(CFG["mask_noise_std"] * rng.standard_normal((B * M, N, D)),
                        dtype=np.float32) for _ in range(STEPS)]
    return x, mask, noise


# ---------------------------------------------------------------------------
# Model.

def embed(p, x):
    """ids [B, N] -> LN(embed_tokens[x] + embed_positions[n + 2]) [B, N, D]."""
    pos = torch.arange(x.shape[1]) + 2                          # fairseq pad offset
    e = p["embed_tokens.weight"][x.long()] + p["embed_positions.weight"][pos]
    return F.layer_norm(e, (D,), p["embed_norm.weight"], p["embed_norm.bias"],
                        CFG["norm_eps"])


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
    """tokens [R, T, D] -> (h [R, T, D], FFN outputs of every block).
    prenet_depth 0: no context LayerNorm, no CLS."""
    h = tokens
    fs = []
    for i in range(NB):
        h, f = block(p, i, h)
        fs.append(f)
    return h, fs


def channel_ln(z):
    """LayerNorm over channels at every position, no affine, eps 1e-5. z [R, Ch, T]."""
    return F.layer_norm(z.transpose(1, 2), (z.shape[1],), eps=1e-5).transpose(1, 2)


def decoder(p, z):
    """z [R, N, D] -> pred [R, N, D] (Decoder1d, two-layer projection)."""
    z = z.transpose(1, 2)                                        # [R, D, N]
    for j in range(CFG["decoder_layers"]):
        pre = "decoder.layers.%d.conv." % j
        y = F.conv1d(z, p[pre + "weight"], p[pre + "bias"], padding=K // 2,
                     groups=CFG["decoder_groups"])
        y = F.gelu(channel_ln(y))
        if CFG["decoder_residual"] and y.shape[1] == z.shape[1]:
            y = y + z
        z = y
    z = z.transpose(1, 2)                                        # [R, N, Dd]
    z = F.gelu(F.linear(z, p["decoder.proj.0.weight"], p["decoder.proj.0.bias"]))
    return F.linear(z, p["decoder.proj.1.weight"], p["decoder.proj.1.bias"])


def keep_index(mask):
    """mask u8 [R, N] -> ascending kept indices [R, N - 5]."""
    return torch.stack([torch.nonzero(row == 0).flatten() for row in mask])


def student_forward(p, x, mask, noise):
    """-> pred [B*M, N, D], h [B*M, V, D]."""
    t = embed(p, x).repeat_interleave(M, dim=0)                  # [B*M, N, D]
    idx = keep_index(mask)
    idx3 = idx.unsqueeze(-1).expand(-1, -1, D)
    h, _ = encoder(p, torch.gather(t, 1, idx3))
    placed = torch.zeros(B * M, N, D).scatter(1, idx3, h)
    z = torch.where(mask.bool().unsqueeze(-1), noise, placed)
    return decoder(p, z), h


def teacher_targets(tp, sp, x):
    """Teacher blocks tp on the STUDENT's embedding sp of the unmasked x -> y [B, N, D]."""
    _, fs = encoder(tp, embed(sp, x))
    top = fs[CFG["prenet_depth"]:][-CFG["top_k"]:]               # main blocks only
    normed = [F.instance_norm(f.transpose(1, 2), eps=1e-5).transpose(1, 2) for f in top]
    return sum(normed) / len(normed)                             # target_final_norm none


def loss_scale():
    return CFG["loss_scale"] if CFG["loss_scale"] else 1.0 / math.sqrt(D)


def d2v_loss(pred, y, mask):
    s = loss_scale()
    mb = mask.bool()
    n_mask = int(mb.sum())
    per_tok = (s * (pred - y.repeat_interleave(M, 0)) ** 2).sum(-1)     # [B*M, N]
    return (per_tok * mb).sum() / n_mask


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


def train(init, x, mask, noises):
    """STEPS updates. Returns a dict of everything the fixture stores."""
    names = list(init)
    tnames = [n for n in names if in_teacher(n)]
    sp = collections.OrderedDict((n, t.clone()) for n, t in init.items())
    tp = collections.OrderedDict((n, init[n].clone()) for n in tnames)
    m = {n: torch.zeros_like(t) for n, t in sp.items()}
    v = {n: torch.zeros_like(t) for n, t in sp.items()}
    b1, b2, eps = CFG["beta1"], CFG["beta2"], CFG["eps"]
    wd, clip = CFG["weight_decay"], CFG["clip_norm"]
    rec = {"losses": [], "grad_norm": [], "lr": [], "tau": [], "clipped": []}
    for k in range(STEPS):
        if k == 0:
            rec["teacher_equal_at_0"] = all(torch.equal(sp[n], tp[n]) for n in tnames)
        rec.setdefault("shared_equal", []).append(
            all(torch.equal(sp[n], tp[n]) for n in tnames if is_shared(n)))
        with torch.no_grad():
            y = teacher_targets(tp, sp, x)
        leaves = collections.OrderedDict((n, t.clone().requires_grad_(True))
                                         for n, t in sp.items())
        pred, _ = student_forward(leaves, x, mask, noises[k])
        loss = d2v_loss(pred, y, mask)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        grads = {n: g.detach() for n, g in zip(names, grads)}
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
        for n in tnames:
            if is_shared(n):
                tp[n] = sp[n].clone()                            # shared: copied
            else:
                tp[n] = tau * tp[n] + (1 - tau) * sp[n]
    rec["student"], rec["teacher"] = sp, tp
    return rec


# ---------------------------------------------------------------------------
# safetensors.

DTYPES = {"U8": "|u1", "I32": "<i4", "F32": "<f4"}


def safetensors_bytes(tensors, metadata):
    header = collections.OrderedDict()
    header["__metadata__"] = metadata
    blobs, off = [], 0
    for name in sorted(tensors):
        a = tensors[name]
        if a.dtype == np.uint8:
            dt = "U8"
        elif a.dtype == np.int32:
            dt = "I32"
        elif a.dtype == np.float32:
            dt = "F32"
        else:
            raise TypeError("%s: %s" % (name, a.dtype))
        raw = a.astype(DTYPES[dt]).tobytes()
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
        out[name] = np.frombuffer(buf[8 + n + b: 8 + n + end],
                                  dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
    return meta, out


def to32(t):
    return np.asarray(t.detach().numpy(), dtype=np.float32)


def build():
    rng = np.random.RandomState(SEED)
    init = init_params(rng)
    x_np, mask_np, noise_np = make_inputs(rng)
    x = torch.from_numpy(x_np.astype(np.int64))
    mask = torch.from_numpy(mask_np)
    noises = [torch.from_numpy(a.astype(np.float64)) for a in noise_np]
    rec = train(init, x, mask, noises)

    t = {}
    for n, v in init.items():
        t["student." + n] = to32(v)
    t["input.x"] = x_np
    t["input.mask"] = mask_np
    for k, a in enumerate(noise_np):
        t["input.noise.%d" % k] = a
    t["expect.y"] = to32(rec["y"])
    t["expect.pred"] = to32(rec["pred"])
    t["expect.loss"] = to32(rec["loss"].reshape(1))
    for n, g in rec["grad"].items():
        t["expect.grad." + n] = to32(g)
    for key in ("grad_norm", "lr", "tau", "losses"):
        t["expect." + key] = np.asarray(rec[key], dtype=np.float32)
    for n in init:
        t["expect.student." + n] = to32(rec["student"][n])
        if in_teacher(n):
            t["expect.teacher." + n] = to32(rec["teacher"][n])
    meta = {"config": json.dumps(CFG, separators=(",", ":"))}
    return safetensors_bytes(t, meta), t, (init, x, mask, noises, rec)


# ---------------------------------------------------------------------------
# Self-checks.

def check_twins(init, x):
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
    z = torch.randn(4, 6, 9, generator=torch.Generator().manual_seed(2))
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

    # Embedding: explicit per-token lookup, position row n + 2, LayerNorm formula.
    e = torch.zeros(B, N, D)
    for b in range(B):
        for n in range(N):
            v = init["embed_tokens.weight"][int(x[b, n])] + init["embed_positions.weight"][n + 2]
            mu = v.mean()
            var = ((v - mu) ** 2).mean()
            e[b, n] = (v - mu) / math.sqrt(float(var) + CFG["norm_eps"]) \
                * init["embed_norm.weight"] + init["embed_norm.bias"]
    check(close(embed(init, x), e, 1e-12, 1e-12),
          "embedding equals explicit lookup + position row n+2 + LayerNorm")

    # Decoder: explicit zero-padded 1-D convolution (groups 1) and projection.
    zin = torch.randn(2, N, D, generator=torch.Generator().manual_seed(4))
    cur = zin.transpose(1, 2)                                    # [R, Cin, N]
    for j in range(CFG["decoder_layers"]):
        w = init["decoder.layers.%d.conv.weight" % j]
        bias = init["decoder.layers.%d.conv.bias" % j]
        pad = F.pad(cur, (K // 2, K // 2))
        y = torch.zeros(cur.shape[0], DD, N)
        for t in range(N):
            y[:, :, t] = torch.einsum("oik,rik->ro", w, pad[:, :, t:t + K]) + bias
        mu = y.mean(1, keepdim=True)
        var = ((y - mu) ** 2).mean(1, keepdim=True)
        y = (y - mu) / torch.sqrt(var + 1e-5)
        cur = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))       # no residual (config)
    hid = cur.transpose(1, 2) @ init["decoder.proj.0.weight"].t() + init["decoder.proj.0.bias"]
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))
    out = hid @ init["decoder.proj.1.weight"].t() + init["decoder.proj.1.bias"]
    check(close(decoder(init, zin), out, 1e-12, 1e-12),
          "decoder equals explicit conv1d (pad k//2) + LN + GELU, Linear-GELU-Linear")


def check_inputs(x_np, mask_np, noise_np):
    check(x_np.dtype == np.int32 and x_np.shape == (B, N)
          and int(x_np.min()) >= 0 and int(x_np.max()) < V_TOK and not (x_np == PAD).any(),
          "input.x i32 [B, N] in [0, vocab), no <pad> id")
    check(any(len(np.unique(r)) < N for r in x_np), "some token id repeats within a sample")
    check(mask_np.shape == (B * M, N) and set(np.unique(mask_np)) <= {0, 1},
          "mask shape [B*M, N], values 0/1")
    check(bool((mask_np.sum(1) == NMASK_ROW).all()), "exactly 5 masked per row")
    check(len({r.tobytes() for r in mask_np}) == B * M, "all mask rows differ")
    sd = float(np.std(np.stack(noise_np)))
    check(0.009 < sd < 0.011 and len(noise_np) == STEPS, "noise std ~0.01 (%.5f)" % sd)


def check_loss_terms(init, x, mask, noise, rec):
    y = teacher_targets(init, init, x)
    pred, _ = student_forward(init, x, mask, noise)
    s = 1.0                                                      # loss_scale 1
    n_mask = 0
    reg = 0.0
    for r in range(B * M):
        for n in range(N):
            if mask[r, n]:
                n_mask += 1
                reg += s * float(((pred[r, n] - y[r // M, n]) ** 2).sum())
    total = reg / n_mask
    loss0 = float(rec["loss"])
    check(n_mask == B * M * NMASK_ROW, "N_mask = %d" % n_mask)
    check(abs(total - loss0) < 1e-12 * max(1.0, abs(loss0)),
          "step-0 loss %.12f recomputed term by term (%.12f)" % (loss0, total))
    check(close(y, rec["y"], 0, 0) and close(pred, rec["pred"], 0, 0),
          "step-0 y and pred recomputed from the initial weights")
    # Targets by hand: the top-2 FFN outputs of blocks 1, 2, normalised over positions.
    _, fs = encoder(init, embed(init, x))
    acc = 0
    for f in fs[-2:]:
        mu = f.mean(1, keepdim=True)
        acc = acc + (f - mu) / torch.sqrt(((f - mu) ** 2).mean(1, keepdim=True) + 1e-5)
    check(close(acc / 2, rec["y"], 1e-12, 1e-12), "y = mean of IN(f) of blocks 1 and 2")
    # Noise at an unmasked slot must not change pred; at a masked slot it must.
    r, n = 0, int(torch.nonzero(mask[0] == 0)[0])
    nz = noise.clone()
    nz[r, n] += 1.0
    check(close(student_forward(init, x, mask, nz)[0], pred, 0, 0),
          "noise at unmasked slots is ignored")
    n = int(torch.nonzero(mask[0] == 1)[0])
    nz = noise.clone()
    nz[r, n] += 1.0
    check(not close(student_forward(init, x, mask, nz)[0], pred, 0, 0),
          "noise at masked slots is used")
    # The student sees only kept tokens: changing a masked token id changes nothing
    # in h of the rows where it is masked.
    b = 0
    n = int(torch.nonzero(mask[0] == 1)[0])
    x2 = x.clone()
    x2[b, n] = (int(x[b, n]) + 2) % V_TOK if (int(x[b, n]) + 2) % V_TOK != PAD else 0
    h1 = student_forward(init, x, mask, noise)[1][0]
    h2 = student_forward(init, x2, mask, noise)[1][0]
    check(close(h1, h2, 0, 0), "a masked token does not reach the student encoder")


def check_grads(init, x, mask, noise, rec):
    y = teacher_targets(init, init, x).detach()
    names = ["embed_norm.weight", "embed_norm.bias", "blocks.0.attn.qkv.bias",
             "blocks.2.norm1.weight", "blocks.1.mlp.fc2.bias", "decoder.layers.0.conv.bias",
             "decoder.layers.1.conv.bias", "decoder.proj.0.bias", "decoder.proj.1.bias"]

    def f(*ts):
        p = dict(init)
        p.update(zip(names, ts))
        return d2v_loss(student_forward(p, x, mask, noise)[0], y, mask)
    ins = tuple(init[n].clone().requires_grad_(True) for n in names)
    ok = torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-8, rtol=1e-6, raise_exception=False)
    check(bool(ok), "torch.autograd.gradcheck of the loss on %d parameters" % len(names))

    # Central differences on single entries of every weight matrix (embedding
    # tables included), compared with the stored step-0 gradient (float64).
    rs = np.random.RandomState(7)
    worst = 0.0
    count = 0
    for n, t in init.items():
        if t.dim() < 2:
            continue
        g_all = rec["grad"][n]
        nz = torch.nonzero(g_all.abs() > 0)
        picks = [tuple(int(c) for c in nz[rs.randint(len(nz))]) for _ in range(2)]
        picks.append(tuple(int(rs.randint(s)) for s in t.shape))
        for i in picks:
            h = 1e-5
            lo, hi = dict(init), dict(init)
            lo[n] = t.clone()
            hi[n] = t.clone()
            lo[n][i] -= h
            hi[n][i] += h
            fd = (float(d2v_loss(student_forward(hi, x, mask, noise)[0], y, mask))
                  - float(d2v_loss(student_forward(lo, x, mask, noise)[0], y, mask))) / (2 * h)
            g = float(g_all[i])
            err = abs(fd - g) / max(1e-4, abs(g))
            worst = max(worst, err)
            count += 1
            if err > 1e-5:
                print("     %s%s: fd %.10g autograd %.10g" % (n, i, fd, g))
    check(worst < 1e-5, "central differences match autograd on %d entries of every weight "
          "matrix (worst relative error %.2e)" % (count, worst))
    # Unused rows get no gradient: embedding rows of absent ids, position rows 0, 1, >= N+2.
    used = set(int(v) for v in x.flatten())
    g = rec["grad"]["embed_tokens.weight"]
    check(all((float(g[i].abs().sum()) > 0) == (i in used) for i in range(V_TOK)),
          "embed_tokens gradient is non-zero exactly on the ids present")
    g = rec["grad"]["embed_positions.weight"]
    check(all((float(g[i].abs().sum()) > 0) == (2 <= i < N + 2) for i in range(NPOS)),
          "embed_positions gradient is non-zero exactly on rows 2..N+1")


def main():
    buf, tensors, (init, x, mask, noises, rec) = build()

    check_inputs(tensors["input.x"], tensors["input.mask"],
                 [tensors["input.noise.%d" % k] for k in range(STEPS)])
    check(rec["teacher_equal_at_0"], "teacher equals student at step 0")
    check_twins(init, x)
    check_loss_terms(init, x, mask, noises[0], rec)
    check_grads(init, x, mask, noises[0], rec)

    lr_ref = [0.0, 5e-4, 1e-3, 7.5e-4, 2.5e-4]
    check(all(abs(a - b) < 1e-15 for a, b in zip(rec["lr"], lr_ref)), "lr schedule %s" % rec["lr"])
    tau_ref = [0.9225, 0.945, 0.9675, 0.99, 0.99]
    check(all(abs(a - b) < 1e-15 for a, b in zip(rec["tau"], tau_ref)), "tau schedule %s" % rec["tau"])
    check(any(rec["clipped"]), "clipping is exercised (steps %s)" %
          [k for k, c in enumerate(rec["clipped"]) if c])
    check(all(not torch.equal(rec["student"][n], init[n]) for n in init),
          "every student parameter moved")
    st, te = rec["student"], rec["teacher"]
    check(all(rec["shared_equal"]) and all(torch.equal(te[n], st[n]) for n in te if is_shared(n)),
          "shared embed_* teacher == student at every step and at the end")
    check(all(not torch.equal(te[n], st[n]) and not torch.equal(te[n], init[n])
              for n in te if not is_shared(n)),
          "EMA'd teacher parameters differ from the student and from the start")
    check(sorted(te) == sorted(n for n in init if not n.startswith("decoder.")),
          "teacher holds every non-decoder parameter")

    buf2 = build()[0]
    check(buf == buf2, "two builds give identical bytes")
    meta, back = safetensors_read(buf)
    check(json.loads(meta["config"]) == CFG and sorted(back) == sorted(tensors)
          and all(np.array_equal(back[n], tensors[n]) and back[n].dtype == tensors[n].dtype
                  for n in tensors),
          "safetensors read-back")
    check(len(buf) < 2 * 1024 * 1024, "fixture size %d bytes < 2 MB" % len(buf))

    print("loss0     ", "%.9f" % float(rec["loss"]))
    print("losses    ", " ".join("%.9f" % v for v in rec["losses"]))
    print("grad_norm ", " ".join("%.9f" % v for v in rec["grad_norm"]))
    print("lr        ", rec["lr"])
    print("tau       ", rec["tau"])

    if FAILED:
        print("v2_text.py: %d check(s) failed; %s not written" % (len(FAILED), OUT))
        sys.exit(1)
    with open(OUT, "wb") as fh:
        fh.write(buf)
    print("wrote %s (%d bytes, %d tensors)" % (OUT, len(buf), len(tensors)))


if __name__ == "__main__":
    main()
