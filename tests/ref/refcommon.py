#!/usr/bin/python3
"""Helpers shared by the PyTorch references of tests/ref (v2_image.py,
v2_text.py, v2_audio.py, v1_image.py, v1_audio.py, v1_text.py; see
tests/ref/README.md).

Written, like those scripts, from ../../../shared/DATA2VEC.md and
tests/ref/README.md only, never from d2v's C code. It holds what the six
scripts do alike: the check() bookkeeping, float32 rounding, the parameter
init rule, the safetensors writer and reader, the lr schedules (cosine and
tri-stage) and the tau schedule, the training loop (fairseq Adam with
decoupled decay, gradient clipping, the EMA teacher with shared parameters
copied), the post-LN AltBlock with its attention, the v2 decoder's conv
stack and its input (kept tokens gathered, encoder output scattered back,
noise at the masked slots), and the pieces two models of one modality share,
each parameterised by the script's config dict: the image models' patch
embedding and 2-D sin-cos table, the text models' token + position
embedding, the speech models' wav2vec 2.0 feature encoder (FEATURE_CONV)
and conv-pos encoder, with the parameter shapes of each. Then the formula
twins (GELU, LayerNorm, attention, AltBlock, sin-cos, patch embedding, text
embedding, Conv1d, feature encoder, conv-pos) and the checks built on them,
the finite-difference gradient checks, the teacher checks and the final
determinism / read-back / tensor-name checks. What belongs to one model
(its configuration, the order of its parameters, its inputs, forward
passes, targets, loss and the checks of those) stays in its script, which
names every shared piece it uses.

Importing it sets torch to float64 and one thread (a fixed reduction order:
identical bytes on every run). Run on its own (`make check-ref` runs every
*.py here) it tests a few of its helpers, writes nothing, and exits non-zero
when one fails.
"""

import collections
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # fixed reduction order: identical bytes on every run

FAILED = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def close(a, b, rtol, atol):
    return bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def f32(a):
    """Round to float32 and come back: what is stored is what is computed with."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def to32(t):
    return np.asarray(t.detach().numpy(), dtype=np.float32)


# ---------------------------------------------------------------------------
# Parameters.

def altblock_shapes(s, nb, dim, mlp_dim):
    """Add the parameters of nb post-LN AltBlocks (README v2_image table) to s."""
    D, FF = dim, mlp_dim
    for i in range(nb):
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


def decoder_conv_shapes(s, cfg, ndim):
    """Add decoder.layers.{j}.conv.* ([Dd, Cin/G] + [k] * ndim, Cin = D for
    j = 0, else Dd) to s."""
    D, DD, K = cfg["dim"], cfg["decoder_dim"], cfg["decoder_kernel"]
    for j in range(cfg["decoder_layers"]):
        cin = D if j == 0 else DD
        p = "decoder.layers.%d.conv." % j
        s[p + "weight"] = (DD, cin // cfg["decoder_groups"]) + (K,) * ndim
        s[p + "bias"] = (DD,)


def patch_embed_shapes(s, cfg):
    """Add the image models' patch_embed.* (Conv2d [D, C, P, P], stride P) and
    cls_token [1, 1, D] to s."""
    D, P = cfg["dim"], cfg["patch"]
    s["patch_embed.weight"] = (D, cfg["channels"], P, P)
    s["patch_embed.bias"] = (D,)
    s["cls_token"] = (1, 1, D)


def text_positions(cfg):
    """Rows of embed_positions: fairseq's max_positions + pad_idx + 1."""
    return cfg["max_positions"] + 2


def text_embed_shapes(s, cfg):
    """Add the text models' embed_tokens [vocab, D], embed_positions
    [max_positions + 2, D] and embed_norm.* [D] to s."""
    D = cfg["dim"]
    s["embed_tokens.weight"] = (cfg["vocab"], D)
    s["embed_positions.weight"] = (text_positions(cfg), D)
    s["embed_norm.weight"] = (D,)
    s["embed_norm.bias"] = (D,)


FEATURE_CONV = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2   # (kernel, stride) of the 7 layers


def conv_len(t):
    """Frames out of the feature encoder for t samples."""
    for k, s in FEATURE_CONV:
        t = (t - k) // s + 1
    return t


def feature_encoder_shapes(s, cfg):
    """Add the speech models' feature encoder to s: feature_extractor.conv_layers.{i}
    (conv.weight [C, Cin, k], no bias; norm.* [C]) for the 7 layers of
    FEATURE_CONV, feature_norm.* [C] and feature_proj [D, C], C = conv_dim."""
    CC, D = cfg["conv_dim"], cfg["dim"]
    for i, (k, _) in enumerate(FEATURE_CONV):
        p = "feature_extractor.conv_layers.%d." % i
        s[p + "conv.weight"] = (CC, 1 if i == 0 else CC, k)
        s[p + "norm.weight"] = (CC,)
        s[p + "norm.bias"] = (CC,)
    s["feature_norm.weight"] = (CC,)
    s["feature_norm.bias"] = (CC,)
    s["feature_proj.weight"] = (D, CC)
    s["feature_proj.bias"] = (D,)


def pos_conv_shapes(s, cfg):
    """Add the speech models' conv-pos layers pos_conv.{j} ([D, D/G, k], bias
    [D]) to s."""
    D, PG = cfg["dim"], cfg["pos_conv_groups"]
    for j in range(cfg["pos_conv_depth"]):
        s["pos_conv.%d.weight" % j] = (D, D // PG, cfg["pos_conv_kernel"])
        s["pos_conv.%d.bias" % j] = (D,)


def init_rule(name, z):
    """Linear/conv weights N(0, 1/fan_in) so attention, GELU and the decoder
    work away from their linear regions; biases N(0, 0.02); LayerNorm weight
    1 + N(0, 0.1), bias N(0, 0.05). z: the N(0, 1) draw of the parameter."""
    if "norm" in name and name.endswith(".weight"):
        return 1.0 + 0.1 * z
    if "norm" in name and name.endswith(".bias"):
        return 0.05 * z
    if name.endswith(".bias"):
        return 0.02 * z
    fan_in = int(np.prod(z.shape[1:]))
    return z / math.sqrt(fan_in)


def init_params(shapes, rng, special=None):
    """One N(0, 1) draw per parameter, in the order of shapes, scaled by
    special(name, z) where that gives a value (not None), else by init_rule;
    rounded to float32."""
    out = collections.OrderedDict()
    for name, shape in shapes.items():
        z = rng.standard_normal(shape)
        v = special(name, z) if special else None
        out[name] = torch.tensor(f32(init_rule(name, z) if v is None else v))
    return out


def embed_tables_normal(name, z):
    """init_params' special of the text models: both embedding tables N(0, 1)
    (every row random; position rows 0 and 1 are never used)."""
    return z if name.startswith(("embed_tokens.", "embed_positions.")) else None


def decayed(name, t):
    """Weight decay on rank > 1, not ending in .bias."""
    return t.dim() > 1 and not name.endswith(".bias")


def not_decoder(name):
    """in_teacher of the v2 text and audio models: every parameter but decoder.*."""
    return not name.startswith("decoder.")


# ---------------------------------------------------------------------------
# Inputs.

def test_images(rng, S):
    """-> ([img0, img1], (yy, xx)): two S x S grey images before rounding (a
    ramp with stripes, rings; their pixel noise drawn from rng in that order)
    and the coordinate grids."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    img0 = 30 + 9 * xx + 5 * yy + 25 * np.sin(yy / 2.3) + rng.normal(0, 10, (S, S))
    r = np.sqrt((xx - 9.5) ** 2 + (yy - 6.0) ** 2)
    img1 = 120 + 100 * np.cos(r / 2.7) - 3 * xx + rng.normal(0, 10, (S, S))
    return [img0, img1], (yy, xx)


def to_u8(imgs):
    """Stack [B] images of [S, S] as u8 [B, 1, S, S] (rounded, clipped)."""
    x = np.stack(imgs)[:, None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def keep_row(n, keep):
    """A u8 mask row of n ones (1 = masked) with 0 at the kept indices."""
    row = np.ones(n, dtype=np.uint8)
    row[keep] = 0
    return row


def distinct_rows(count, draw):
    """count distinct mask rows, each from draw(); a row equal to an earlier
    one is dropped and drawn again."""
    rows = []
    while len(rows) < count:
        row = draw()
        if not any((row == q).all() for q in rows):
            rows.append(row)
    return rows


def decoder_noise(rng, cfg, rows, n):
    """f32 [rows, n, D] N(0, mask_noise_std^2), one per step."""
    return [np.asarray(cfg["mask_noise_std"] * rng.standard_normal((rows, n, cfg["dim"])),
                       dtype=np.float32) for _ in range(cfg["max_update"])]


def input_arrays(x_np, mask_np, noise_np=()):
    """The fixture's input.x, input.mask and input.noise.<k>."""
    t = {"input.x": x_np, "input.mask": mask_np}
    for k, a in enumerate(noise_np):
        t["input.noise.%d" % k] = a
    return t


def input_tensors(x_np, mask_np, noise_np=(), x_dtype=None):
    """torch tensors of the inputs: x as given (or cast to x_dtype), mask u8,
    the noises float64."""
    x = torch.from_numpy(x_np if x_dtype is None else x_np.astype(x_dtype))
    return (x, torch.from_numpy(mask_np),
            [torch.from_numpy(a.astype(np.float64)) for a in noise_np])


def normalised_waves(waves):
    """[B] waveforms of S samples -> f32 [B, S], each with zero mean and unit
    variance (used as given)."""
    x = np.stack(waves)
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return x.astype(np.float32)


def runs(row):
    """Lengths of the maximal runs of ones in a 0/1 row."""
    out, n = [], 0
    for v in list(row) + [0]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


# ---------------------------------------------------------------------------
# Model pieces.

def sincos_2d(G, D):
    """[G*G, D]: first D/2 dims encode the column, last D/2 the row; each half is
    [sin(p*w_k), cos(p*w_k)], w_k = 10000^(-k/(D/4)), k = 0..D/4-1."""
    q = D // 4
    omega = torch.tensor([10000.0 ** (-k / q) for k in range(q)])
    tab = torch.zeros(G * G, D)
    for n in range(G * G):
        row, col = divmod(n, G)
        for half, pos in ((0, col), (1, row)):
            a = pos * omega
            tab[n, half * D // 2: half * D // 2 + q] = torch.sin(a)
            tab[n, half * D // 2 + q: (half + 1) * D // 2] = torch.cos(a)
    return tab


def patch_tokens(p, x_u8, cfg):
    """u8 [B, C, S, S] -> (u8/255 - mean)/std per channel, Conv2d stride P ->
    patch embeddings [B, N, D] (row-major grid, no positions)."""
    C, P = cfg["channels"], cfg["patch"]
    mean = torch.tensor(cfg["mean"]).view(1, C, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, C, 1, 1)
    x = (x_u8.double() / 255.0 - mean) / std
    t = F.conv2d(x, p["patch_embed.weight"], p["patch_embed.bias"], stride=P)
    return t.flatten(2).transpose(1, 2)


def text_embed(p, x, cfg):
    """ids [B, N] -> LN(embed_tokens[x] + embed_positions[n + 2]) [B, N, D]
    (fairseq's pad offset 2; LayerNorm eps norm_eps)."""
    pos = torch.arange(x.shape[1]) + 2
    e = p["embed_tokens.weight"][x.long()] + p["embed_positions.weight"][pos]
    return F.layer_norm(e, (cfg["dim"],), p["embed_norm.weight"], p["embed_norm.bias"],
                        cfg["norm_eps"])


def feature_encoder(p, x, cfg):
    """waveform [B, S] -> feat [B, N, D]: 7 x (Conv1d of FEATURE_CONV, no bias ->
    LN(C) affine -> GELU), then feature_norm LN(C) and feature_proj Linear(C -> D)."""
    CC = cfg["conv_dim"]
    h = x.unsqueeze(1)
    for i, (_, s) in enumerate(FEATURE_CONV):
        pre = "feature_extractor.conv_layers.%d." % i
        h = F.conv1d(h, p[pre + "conv.weight"], stride=s)
        h = F.layer_norm(h.transpose(1, 2), (CC,), p[pre + "norm.weight"],
                         p[pre + "norm.bias"], 1e-5).transpose(1, 2)
        h = F.gelu(h)
    h = F.layer_norm(h.transpose(1, 2), (CC,), p["feature_norm.weight"],
                     p["feature_norm.bias"], 1e-5)
    return F.linear(h, p["feature_proj.weight"], p["feature_proj.bias"])


def pos_encode(p, z, cfg):
    """z [R, T, D] -> z + pos(z): pos_conv_depth x (Conv1d(k, pad k//2, groups g)
    -> LN over channels (no affine) -> GELU)."""
    PK = cfg["pos_conv_kernel"]
    y = z.transpose(1, 2)
    for j in range(cfg["pos_conv_depth"]):
        y = F.conv1d(y, p["pos_conv.%d.weight" % j], p["pos_conv.%d.bias" % j],
                     padding=PK // 2, groups=cfg["pos_conv_groups"])
        y = F.gelu(channel_ln(y))
    return z + y.transpose(1, 2)


def attention(p, pre, x, heads, bias=None, qkv_bias=None):
    """x [R, T, D] -> proj(attn(qkv(x))) [R, T, D]: heads of D/H, scale
    (D/H)^-0.5, softmax; bias [R, H, T, T] added to the scaled logits when
    given; qkv_bias replaces the stored attn.qkv.bias when given."""
    R, T, D = x.shape
    H, HD = heads, D // heads
    b = p[pre + "attn.qkv.bias"] if qkv_bias is None else qkv_bias
    qkv = F.linear(x, p[pre + "attn.qkv.weight"], b)
    qkv = qkv.reshape(R, T, 3, H, HD).permute(2, 0, 3, 1, 4)     # [3, R, H, T, HD]
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q * HD ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    a = torch.softmax(logits, dim=-1)
    o = (a @ v).transpose(1, 2).reshape(R, T, D)
    return F.linear(o, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])


def altblock(p, i, x, heads, eps, bias=None):
    """Post-LN AltBlock (DATA2VEC.md §3.1). Returns (out, f) with f the FFN
    output before the residual."""
    pre = "blocks.%d." % i
    D = x.shape[-1]
    x = x + attention(p, pre, x, heads, bias)
    r = F.layer_norm(x, (D,), p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps)
    f = F.linear(F.gelu(F.linear(r, p[pre + "mlp.fc1.weight"], p[pre + "mlp.fc1.bias"])),
                 p[pre + "mlp.fc2.weight"], p[pre + "mlp.fc2.bias"])
    out = F.layer_norm(r + f, (D,), p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps)
    return out, f


def altblocks(p, h, cfg, bias=None):
    """Every block (prenet first) -> (h, FFN outputs of every block)."""
    fs = []
    for i in range(cfg["prenet_depth"] + cfg["depth"]):
        h, f = altblock(p, i, h, cfg["heads"], cfg["norm_eps"], bias)
        fs.append(f)
    return h, fs


def top_k(fs, cfg):
    """The outputs of the last top_k MAIN blocks (never prenet blocks)."""
    return fs[cfg["prenet_depth"]:][-cfg["top_k"]:]


def mean_instance_norm(fs):
    """Each f [R, T, D] instance-normalised over T per channel (biased
    variance, eps 1e-5, no affine), then averaged."""
    normed = [F.instance_norm(f.transpose(1, 2), eps=1e-5).transpose(1, 2) for f in fs]
    return sum(normed) / len(normed)


def channel_ln(z):
    """LayerNorm over channels (dim 1) at every position, no affine, eps 1e-5.
    z [R, Ch, T] or [R, Ch, G, G]."""
    if z.dim() == 4:
        return F.layer_norm(z.permute(0, 2, 3, 1), (z.shape[1],), eps=1e-5).permute(0, 3, 1, 2)
    return F.layer_norm(z.transpose(1, 2), (z.shape[1],), eps=1e-5).transpose(1, 2)


def decoder_convs(p, z, cfg, conv):
    """The decoder layers on z [R, D, ...] (channel-first): conv (F.conv1d or
    F.conv2d, padding k//2, groups G, bias) -> channel LayerNorm -> GELU ->
    + layer input when decoder_residual and the channel counts match."""
    for j in range(cfg["decoder_layers"]):
        pre = "decoder.layers.%d.conv." % j
        y = conv(z, p[pre + "weight"], p[pre + "bias"], padding=cfg["decoder_kernel"] // 2,
                 groups=cfg["decoder_groups"])
        y = F.gelu(channel_ln(y))
        if cfg["decoder_residual"] and y.shape[1] == z.shape[1]:
            y = y + z
        z = y
    return z


def keep_index(mask):
    """mask u8 [R, N] -> ascending kept indices [R, V]."""
    return torch.stack([torch.nonzero(row == 0).flatten() for row in mask])


def gather_kept(x, mask):
    """x [R, N, D] -> (the kept tokens [R, V, D], their indices [R, V], the
    indices expanded over D [R, V, D])."""
    idx = keep_index(mask)
    idx3 = idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, idx3), idx, idx3


def decoder_input(h, idx3, mask, noise):
    """The v2 decoder's input [R, N, D]: the encoder output h [R, V, D] of the
    kept tokens back at idx3, the noise [R, N, D] at the masked slots."""
    placed = torch.zeros(noise.shape).scatter(1, idx3, h)
    return torch.where(mask.bool().unsqueeze(-1), noise, placed)


def loss_scale(cfg):
    return cfg["loss_scale"] if cfg["loss_scale"] else 1.0 / math.sqrt(cfg["dim"])


def masked_sq_err(pred, y, mask, M, s):
    """(sum over masked (r, n) of sum_d s (pred[r,n,d] - y[r // M,n,d])^2, N_mask)."""
    mb = mask.bool()
    n_mask = int(mb.sum())
    per_tok = (s * (pred - y.repeat_interleave(M, 0)) ** 2).sum(-1)     # [B*M, N]
    return (per_tok * mb).sum(), n_mask


def regression_loss(cfg, pred, y, mask):
    """The v2 loss without a CLS term: masked_sq_err / N_mask, s = loss_scale."""
    reg, n_mask = masked_sq_err(pred, y, mask, cfg["clone"], loss_scale(cfg))
    return reg / n_mask


# ---------------------------------------------------------------------------
# Schedules and the update (fairseq semantics, README "Update").

def lr_at(cfg, k):
    """lr of update k (k updates done): cfg["lr_schedule"] "tri_stage" selects
    tri_stage_lr_at; "cosine" or no key, the cosine schedule."""
    if cfg.get("lr_schedule", "cosine") == "tri_stage":
        return tri_stage_lr_at(cfg, k)
    lr, lo, w, T = cfg["lr"], cfg["min_lr"], cfg["warmup"], cfg["max_update"]
    if k < w:
        return lo + (lr - lo) * k / w
    return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * (k - w) / (T - w)))


def tri_stage_stage(cfg, k):
    """fairseq tri_stage's _decide_stage: -> (stage 0..3, steps into it)."""
    w, hold = cfg["warmup"], cfg["hold"]
    decay = cfg["max_update"] - w - hold
    if k < w:
        return 0, k
    if k < w + hold:
        return 1, k - w
    if k <= w + hold + decay:
        return 2, k - w - hold
    return 3, k - w - hold - decay


def tri_stage_lr_at(cfg, k):
    """fairseq's tri_stage (README v1_audio "Update"): linear warmup from
    init_lr_scale * lr over warmup updates, hold at lr, exponential decay to
    final_lr_scale * lr over the max_update - warmup - hold remaining updates,
    then final_lr_scale * lr."""
    peak = cfg["lr"]
    init, final = cfg["init_lr_scale"] * peak, cfg["final_lr_scale"] * peak
    decay = cfg["max_update"] - cfg["warmup"] - cfg["hold"]
    stage, n = tri_stage_stage(cfg, k)
    if stage == 0:
        return init + (peak - init) * n / cfg["warmup"]
    if stage == 1:
        return peak
    if stage == 2:
        return peak * math.exp(-(-math.log(cfg["final_lr_scale"]) / decay) * n) if n else peak
    return final


def tau_at(cfg, t):
    a, e, n = cfg["ema_decay"], cfg["ema_end_decay"], cfg["ema_anneal_end_step"]
    return e - (e - a) * max(0.0, 1.0 - t / n)


def train(cfg, init, step, decayed=decayed, in_teacher=None, is_shared=None, after=None):
    """max_update updates on the same batch. Returns a dict of everything the
    fixture stores.

    step(k, sp, tp, leaves) -> (loss, keep): step k's loss of the student
    leaves (sp with requires_grad) against the targets of the teacher tp
    (computed without grad); keep, a dict of detached tensors, is recorded
    at k == 0 (y, pred, ...). in_teacher(name): the teacher holds it
    (default all); is_shared(name): the teacher's copy is set equal to the
    student's after every update instead of the EMA (default none).
    after(k, rec, keep, grads, sp, tp) runs at the end of every step, with
    the unclipped gradients."""
    in_teacher = in_teacher or (lambda n: True)
    is_shared = is_shared or (lambda n: False)
    names = list(init)
    tnames = [n for n in names if in_teacher(n)]
    sp = collections.OrderedDict((n, t.clone()) for n, t in init.items())
    tp = collections.OrderedDict((n, init[n].clone()) for n in tnames)
    m = {n: torch.zeros_like(t) for n, t in sp.items()}
    v = {n: torch.zeros_like(t) for n, t in sp.items()}
    b1, b2, eps = cfg["beta1"], cfg["beta2"], cfg["eps"]
    wd, clip = cfg["weight_decay"], cfg["clip_norm"]
    rec = {"losses": [], "grad_norm": [], "lr": [], "tau": [], "clipped": [], "shared_equal": []}
    for k in range(cfg["max_update"]):
        if k == 0:
            rec["teacher_equal_at_0"] = all(torch.equal(sp[n], tp[n]) for n in tnames)
        rec["shared_equal"].append(all(torch.equal(sp[n], tp[n]) for n in tnames if is_shared(n)))
        leaves = collections.OrderedDict((n, t.clone().requires_grad_(True))
                                         for n, t in sp.items())
        loss, keep = step(k, sp, tp, leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        grads = {n: g.detach() for n, g in zip(names, grads)}
        raw = grads
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        if k == 0:
            rec.update(keep)
            rec["loss"] = loss.detach()
            rec["grad"] = {n: g.clone() for n, g in grads.items()}
        rec["losses"].append(float(loss))
        rec["grad_norm"].append(norm)
        clipped = clip > 0 and norm > clip
        rec["clipped"].append(clipped)
        if clipped:
            coef = clip / (norm + 1e-6)
            grads = {n: g * coef for n, g in grads.items()}
        lr = lr_at(cfg, k)
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
        tau = tau_at(cfg, t)
        rec["tau"].append(tau)
        for n in tnames:
            if is_shared(n):
                tp[n] = sp[n].clone()                            # shared: copied
            else:
                tp[n] = tau * tp[n] + (1 - tau) * sp[n]
        if after:
            after(k, rec, keep, raw, sp, tp)
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


def fixture(cfg, init, rec, inputs, extra=(), in_teacher=None):
    """The fixture's tensors and bytes: student.<name>, the input.* arrays
    given, expect.y, expect.pred, expect.loss, expect.<key> of rec for each
    key in extra (step-0 tensors), expect.grad.<name>, expect.grad_norm, lr,
    tau, losses, expect.student.<name>, expect.teacher.<name> (the names
    in_teacher keeps; default all); the configuration as
    __metadata__["config"]. -> (bytes, tensors)."""
    t = {}
    for n, v in init.items():
        t["student." + n] = to32(v)
    t.update(inputs)
    for key in ("y",) + tuple(extra) + ("pred",):
        t["expect." + key] = to32(rec[key])
    t["expect.loss"] = to32(rec["loss"].reshape(1))
    for n, g in rec["grad"].items():
        t["expect.grad." + n] = to32(g)
    for key in ("grad_norm", "lr", "tau", "losses"):
        t["expect." + key] = np.asarray(rec[key], dtype=np.float32)
    for n in init:
        t["expect.student." + n] = to32(rec["student"][n])
        if in_teacher is None or in_teacher(n):
            t["expect.teacher." + n] = to32(rec["teacher"][n])
    meta = {"config": json.dumps(cfg, separators=(",", ":"))}
    return safetensors_bytes(t, meta), t


# ---------------------------------------------------------------------------
# Twins and checks.

def gelu_ref(z):
    return 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))


def ln_ref(z, w=None, b=None, eps=1e-5):
    """LayerNorm over the last dim by its formula."""
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    out = (z - mu) / torch.sqrt(var + eps)
    return out if w is None else out * w + b


def dim1_norm_ref(z, eps=1e-5):
    """Normalisation over dim 1 by its formula (biased variance, no affine):
    channel LayerNorm of [R, Ch, ...], instance norm over T of [R, T, D]."""
    mu = z.mean(1, keepdim=True)
    return (z - mu) / torch.sqrt(((z - mu) ** 2).mean(1, keepdim=True) + eps)


def mha_ref(p, pre, xs, heads, attn_mask=None):
    """torch's own multi-head attention with the stored [q;k;v] layout and
    bias, xs [R, T, D] -> [R, T, D]."""
    D = xs.shape[-1]
    ref, _ = F.multi_head_attention_forward(
        xs.transpose(0, 1), xs.transpose(0, 1), xs.transpose(0, 1), D, heads,
        p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"], None, None, False, 0.0,
        p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"],
        training=False, need_weights=False, attn_mask=attn_mask)
    return ref.transpose(0, 1)


def attn_ref(p, pre, x, heads):
    """Attention head by head with an explicit softmax, from the stored [3D, D]
    qkv weight and [3D] bias (no position bias). x [..., T, D]."""
    D = x.shape[-1]
    HD = D // heads
    wq, wk, wv = p[pre + "attn.qkv.weight"].split(D)
    bq, bk, bv = p[pre + "attn.qkv.bias"].split(D)
    q, k, v = x @ wq.t() + bq, x @ wk.t() + bk, x @ wv.t() + bv
    out = []
    for hh in range(heads):
        sl = slice(hh * HD, (hh + 1) * HD)
        logit = q[..., sl] @ k[..., sl].transpose(-2, -1) / math.sqrt(HD)
        e = torch.exp(logit - logit.max(-1, keepdim=True).values)
        out.append((e / e.sum(-1, keepdim=True)) @ v[..., sl])
    return torch.cat(out, -1) @ p[pre + "attn.proj.weight"].t() + p[pre + "attn.proj.bias"]


def altblock_ref(p, i, x, heads, eps):
    """The post-LN AltBlock by its formulas (attn_ref, ln_ref, gelu_ref):
    x += attn(x); r = LN1(x); f = fc2(gelu(fc1(r))); out = LN2(r + f). -> (out, f)."""
    pre = "blocks.%d." % i
    x = x + attn_ref(p, pre, x, heads)
    r = ln_ref(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps)
    f = gelu_ref(r @ p[pre + "mlp.fc1.weight"].t() + p[pre + "mlp.fc1.bias"]) \
        @ p[pre + "mlp.fc2.weight"].t() + p[pre + "mlp.fc2.bias"]
    return ln_ref(r + f, p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps), f


def altblocks_ref(p, h, cfg):
    """Every block (prenet first) by altblock_ref -> (h, FFN outputs of every block)."""
    fs = []
    for i in range(cfg["prenet_depth"] + cfg["depth"]):
        h, f = altblock_ref(p, i, h, cfg["heads"], cfg["norm_eps"])
        fs.append(f)
    return h, fs


def conv1d_ref(x, w, b, stride=1, pad=0, groups=1):
    """Explicit (cross-correlation) Conv1d by windows and einsum. x [R, Cin, T]."""
    if pad:
        x = F.pad(x, (pad, pad))
    k = w.shape[2]
    win = x.unfold(2, k, stride)                                 # [R, Cin, T_out, k]
    cin_g, cout_g = w.shape[1], w.shape[0] // groups
    outs = []
    for g in range(groups):
        outs.append(torch.einsum("rctk,ock->rot", win[:, g * cin_g:(g + 1) * cin_g],
                                 w[g * cout_g:(g + 1) * cout_g]))
    y = torch.cat(outs, 1)
    return y if b is None else y + b.view(1, -1, 1)


def feature_encoder_ref(p, x):
    """The feature encoder by conv1d_ref, ln_ref and gelu_ref."""
    h = x.unsqueeze(1)
    for i, (_, s) in enumerate(FEATURE_CONV):
        pre = "feature_extractor.conv_layers.%d." % i
        h = conv1d_ref(h, p[pre + "conv.weight"], None, stride=s)
        h = ln_ref(h.transpose(1, 2), p[pre + "norm.weight"], p[pre + "norm.bias"])
        h = gelu_ref(h).transpose(1, 2)
    h = ln_ref(h.transpose(1, 2), p["feature_norm.weight"], p["feature_norm.bias"])
    return h @ p["feature_proj.weight"].t() + p["feature_proj.bias"]


def pos_encode_ref(p, z, cfg):
    """The conv-pos encoder by conv1d_ref, ln_ref and gelu_ref. z [R, T, D]."""
    PK = cfg["pos_conv_kernel"]
    y = z.transpose(1, 2)
    for j in range(cfg["pos_conv_depth"]):
        y = conv1d_ref(y, p["pos_conv.%d.weight" % j], p["pos_conv.%d.bias" % j],
                       pad=PK // 2, groups=cfg["pos_conv_groups"])
        y = gelu_ref(ln_ref(y.transpose(1, 2))).transpose(1, 2)
    return z + y.transpose(1, 2)


def text_embed_ref(p, x, cfg):
    """The text embedding token by token: row x[b, n] + position row n + 2, ln_ref."""
    e = torch.zeros(x.shape[0], x.shape[1], cfg["dim"])
    for b in range(x.shape[0]):
        for n in range(x.shape[1]):
            e[b, n] = ln_ref(p["embed_tokens.weight"][int(x[b, n])] + p["embed_positions.weight"][n + 2],
                             p["embed_norm.weight"], p["embed_norm.bias"], cfg["norm_eps"])
    return e


def check_sincos(pos, G, D):
    """The table against the MAE construction (meshgrid with w first, numpy)."""
    gw, gh = np.meshgrid(np.arange(G, dtype=np.float64), np.arange(G, dtype=np.float64))

    def one_d(dim, p):
        om = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        o = np.einsum("m,d->md", p.reshape(-1), om)
        return np.concatenate([np.sin(o), np.cos(o)], axis=1)
    mae = np.concatenate([one_d(D // 2, gw), one_d(D // 2, gh)], axis=1)
    check(np.abs(mae - pos.numpy()).max() < 1e-14, "sin-cos table equals the MAE meshgrid construction")


def patch_ref(p, x_u8, cfg):
    """Explicit per-patch matmul, row-major token order, one channel. -> [B, N, D]."""
    P = cfg["patch"]
    G = cfg["image_size"] // P
    D = cfg["dim"]
    x = (x_u8.double() / 255.0 - cfg["mean"][0]) / cfg["std"][0]
    tok = torch.zeros(x.shape[0], G * G, D)
    w = p["patch_embed.weight"].reshape(D, -1)
    for b in range(x.shape[0]):
        for n in range(G * G):
            r, c = divmod(n, G)
            tok[b, n] = w @ x[b, :, r * P:(r + 1) * P, c * P:(c + 1) * P].reshape(-1) \
                + p["patch_embed.bias"]
    return tok


def check_gelu(z):
    check(close(F.gelu(z), gelu_ref(z), 1e-14, 1e-14), "gelu is the exact erf form")


def check_channel_ln(z, what):
    check(close(channel_ln(z), dim1_norm_ref(z), 1e-12, 1e-12), what)


def check_instance_norm(n, d, over):
    a = torch.randn(2, n, d, generator=torch.Generator().manual_seed(3))
    check(close(mean_instance_norm([a]), dim1_norm_ref(a), 1e-12, 1e-12),
          "instance norm over %s (biased variance) equals the formula" % over)


def check_layer_norm(z):
    D = z.shape[-1]
    check(close(F.layer_norm(z, (D,), eps=1e-5), ln_ref(z), 1e-12, 1e-12),
          "LayerNorm (no affine, eps 1e-5) equals the formula")


def check_attention(p, cfg, T, attn=None):
    """attn(p, pre, x) (default: attention with the stored bias) of blocks.1.
    on [3, T, D] against torch's multi-head attention and attn_ref."""
    H = cfg["heads"]
    attn = attn or (lambda p, pre, x: attention(p, pre, x, H))
    xs = torch.randn(3, T, cfg["dim"], generator=torch.Generator().manual_seed(1))
    got = attn(p, "blocks.1.", xs)
    check(close(got, mha_ref(p, "blocks.1.", xs, H), 1e-12, 1e-12)
          and close(got, attn_ref(p, "blocks.1.", xs, H), 1e-12, 1e-12),
          "attention equals F.multi_head_attention_forward and the head-by-head formula")


def check_altblocks(p, cfg, T):
    """Every AltBlock against altblock_ref on [2, T, D] (out and f)."""
    xb = torch.randn(2, T, cfg["dim"], generator=torch.Generator().manual_seed(3))
    ok = True
    for i in range(cfg["prenet_depth"] + cfg["depth"]):
        o1, f1 = altblock(p, i, xb, cfg["heads"], cfg["norm_eps"])
        o2, f2 = altblock_ref(p, i, xb, cfg["heads"], cfg["norm_eps"])
        ok = ok and close(o1, o2, 1e-12, 1e-12) and close(f1, f2, 1e-12, 1e-12)
    check(ok, "every block equals the post-LN formula (out and f)")


def check_frame_counts(S, N, want):
    """Frames per feature-encoder layer by floor((t - k) / s) + 1: want at the end."""
    t, lens = S, []
    for k, s in FEATURE_CONV:
        t = math.floor((t - k) / s) + 1
        lens.append(t)
    check(N == want and lens[-1] == want, "frame counts per layer %s, N = %d" % (lens, N))


def check_feature_encoder(p, x, cfg, N):
    feat = feature_encoder(p, x, cfg)
    check(feat.shape == (x.shape[0], N, cfg["dim"])
          and close(feat, feature_encoder_ref(p, x), 1e-11, 1e-11),
          "feature encoder equals explicit strided conv + LN + GELU, LN, Linear")


def check_pos_encode(p, cfg, N):
    z = torch.randn(3, N, cfg["dim"], generator=torch.Generator().manual_seed(5))
    check(close(pos_encode(p, z, cfg), pos_encode_ref(p, z, cfg), 1e-12, 1e-12),
          "conv-pos equals explicit grouped conv (pad k//2) + LN + GELU, added to its input")


def check_text_embed(p, x, cfg):
    check(close(text_embed(p, x, cfg), text_embed_ref(p, x, cfg), 1e-12, 1e-12),
          "embedding equals explicit lookup + position row n+2 + LayerNorm")


def check_wave_input(x_np, B, S):
    check(x_np.dtype == np.float32 and x_np.shape == (B, S), "input.x f32 [B, S]")
    xm = x_np.astype(np.float64)
    check(bool((np.abs(xm.mean(1)) < 1e-6).all() and (np.abs(xm.std(1) - 1) < 1e-6).all()),
          "input.x rows have zero mean and unit variance")


def check_image_input(x_np, cfg, B):
    C, S = cfg["channels"], cfg["image_size"]
    check(x_np.dtype == np.uint8 and x_np.shape == (B, C, S, S)
          and all(len(np.unique(x_np[b])) > 20 for b in range(B)),
          "input.x u8 [B, C, S, S], not constant")


def check_mask_rows(mask_np, rows, n, nmask):
    check(mask_np.shape == (rows, n) and set(np.unique(mask_np)) <= {0, 1},
          "mask shape [B*M, N], values 0/1")
    check(bool((mask_np.sum(1) == nmask).all()), "exactly %d of %d masked per row" % (nmask, n))
    check(len({r.tobytes() for r in mask_np}) == rows, "all mask rows differ")


def check_noise(noise_np, steps):
    sd = float(np.std(np.stack(noise_np)))
    check(0.009 < sd < 0.011 and len(noise_np) == steps, "noise std ~0.01 (%.5f)" % sd)


def loss_by_hand(pred, y, mask, M, s):
    """(sum over masked (r, n) of s |pred[r, n] - y[r // M, n]|^2, N_mask), loop by loop."""
    n_mask = 0
    reg = 0.0
    for r in range(mask.shape[0]):
        for n in range(mask.shape[1]):
            if mask[r, n]:
                n_mask += 1
                reg += s * float(((pred[r, n] - y[r // M, n]) ** 2).sum())
    return reg, n_mask


def check_recomputed(rec, y, pred):
    check(close(y, rec["y"], 0, 0) and close(pred, rec["pred"], 0, 0),
          "step-0 y and pred recomputed from the initial weights")


def check_loss_by_hand(rec, y, pred, mask, M, s, nmask_row):
    """The loss sum over masked (r, n) of s |pred - y|^2 / N_mask, term by term,
    against the step-0 loss; y and pred against the step-0 ones."""
    reg, n_mask = loss_by_hand(pred, y, mask, M, s)
    total = reg / n_mask
    loss0 = float(rec["loss"])
    check(n_mask == mask.shape[0] * nmask_row, "N_mask = %d" % n_mask)
    check(abs(total - loss0) < 1e-12 * max(1.0, abs(loss0)),
          "step-0 loss %.12f recomputed term by term (%.12f)" % (loss0, total))
    check_recomputed(rec, y, pred)


def check_noise_slots(pred_of, pred, mask, noise):
    """pred_of(noise) -> pred: noise at an unmasked slot must not change pred;
    at a masked slot it must."""
    r, n = 0, int(torch.nonzero(mask[0] == 0)[0])
    nz = noise.clone()
    nz[r, n] += 1.0
    check(close(pred_of(nz), pred, 0, 0), "noise at unmasked slots is ignored")
    n = int(torch.nonzero(mask[0] == 1)[0])
    nz = noise.clone()
    nz[r, n] += 1.0
    check(not close(pred_of(nz), pred, 0, 0), "noise at masked slots is used")


def gradcheck_loss(init, names, loss_of, atol=1e-8):
    """torch.autograd.gradcheck of loss_of(params) in the parameters names."""
    def f(*ts):
        p = dict(init)
        p.update(zip(names, ts))
        return loss_of(p)
    ins = tuple(init[n].clone().requires_grad_(True) for n in names)
    return bool(torch.autograd.gradcheck(f, ins, eps=1e-6, atol=atol, rtol=1e-6,
                                         raise_exception=False))


def central_diff(init, grad, loss_of, picks):
    """Central differences (h = 1e-5) of loss_of(params) on single entries,
    against grad (the stored step-0 gradient, float64). picks(name, t, g, rs)
    gives the entries of one parameter (none to skip it), rs a RandomState(7)
    shared by all. Prints every mismatch; -> (worst relative error, count)."""
    rs = np.random.RandomState(7)
    worst, count = 0.0, 0
    for n, t in init.items():
        for i in picks(n, t, grad[n], rs):
            h = 1e-5
            lo, hi = dict(init), dict(init)
            lo[n] = t.clone()
            hi[n] = t.clone()
            lo[n][i] -= h
            hi[n][i] += h
            fd = (float(loss_of(hi)) - float(loss_of(lo))) / (2 * h)
            g = float(grad[n][i])
            err = abs(fd - g) / max(1e-4, abs(g))
            worst = max(worst, err)
            count += 1
            if err > 1e-5:
                print("     %s%s: fd %.10g autograd %.10g" % (n, i, fd, g))
    return worst, count


def random_entries(count):
    """picks for central_diff: count uniformly random entries of every
    parameter of rank > 1."""
    def picks(n, t, g, rs):
        if t.dim() < 2:
            return []
        return [tuple(int(rs.randint(s)) for s in t.shape) for _ in range(count)]
    return picks


def nonzero_and_random_entries(n, t, g, rs):
    """picks for central_diff: of every parameter of rank > 1, two entries with
    a non-zero gradient and one anywhere."""
    if t.dim() < 2:
        return []
    nz = torch.nonzero(g.abs() > 0)
    out = [tuple(int(c) for c in nz[rs.randint(len(nz))]) for _ in range(2)]
    return out + [tuple(int(rs.randint(s)) for s in t.shape)]


def check_grads_nonzero(rec, init):
    check(all(float(rec["grad"][n].abs().max()) > 0 for n in init),
          "every parameter has a non-zero step-0 gradient")


def check_embed_grads(grad, ids, cfg, ids_text):
    """The text embedding's step-0 gradient: embed_tokens rows non-zero exactly
    on the ids (ids_text says which), embed_positions rows on 2..N+1."""
    used = set(int(v) for v in ids.flatten())
    g = grad["embed_tokens.weight"]
    check(all((float(g[i].abs().sum()) > 0) == (i in used) for i in range(cfg["vocab"])),
          "embed_tokens gradient is non-zero exactly on " + ids_text)
    N = ids.shape[1]
    g = grad["embed_positions.weight"]
    check(all((float(g[i].abs().sum()) > 0) == (2 <= i < N + 2) for i in range(text_positions(cfg))),
          "embed_positions gradient is non-zero exactly on rows 2..N+1")


def masked_preds_differ(pred, mask):
    """The masked positions of every row of pred [R, N, D] get pairwise
    different predictions (by more than 1e-3 somewhere)."""
    ok = True
    for b in range(pred.shape[0]):
        pm = pred[b][mask[b].bool()]
        gap = (pm.unsqueeze(0) - pm.unsqueeze(1)).abs().amax(-1).fill_diagonal_(1)
        ok = ok and float(gap.min()) > 1e-3
    return ok


def check_schedules(rec):
    lr_ref = [0.0, 5e-4, 1e-3, 7.5e-4, 2.5e-4]
    check(all(abs(a - b) < 1e-15 for a, b in zip(rec["lr"], lr_ref)), "lr schedule %s" % rec["lr"])
    tau_ref = [0.9225, 0.945, 0.9675, 0.99, 0.99]
    check(all(abs(a - b) < 1e-15 for a, b in zip(rec["tau"], tau_ref)), "tau schedule %s" % rec["tau"])


def check_clipped(rec):
    check(any(rec["clipped"]), "clipping is exercised (steps %s)" %
          [k for k, c in enumerate(rec["clipped"]) if c])


def check_moved(rec, init):
    check(all(not torch.equal(rec["student"][n], init[n]) for n in init),
          "every student parameter moved")


def ema_moved(rec, init, names):
    """Every teacher parameter named differs from the student and from the start."""
    st, te = rec["student"], rec["teacher"]
    return all(not torch.equal(te[n], st[n]) and not torch.equal(te[n], init[n]) for n in names)


def check_shared_teacher(rec, init, in_teacher, is_shared, held, shared, emad):
    """The text and audio teachers: they hold exactly the parameters in_teacher
    keeps (held, in words); the shared ones equal the student's at every step
    and at the end; the EMA'd ones (emad) differ from the student and from the
    start."""
    st, te = rec["student"], rec["teacher"]
    check(sorted(te) == sorted(n for n in init if in_teacher(n)), "teacher holds " + held)
    check(all(rec["shared_equal"]) and all(torch.equal(te[n], st[n]) for n in te if is_shared(n)),
          "shared %s teacher == student at every step and at the end" % shared)
    check(ema_moved(rec, init, [n for n in te if not is_shared(n)]),
          "EMA'd %s differ from the student and from the start" % emad)


def check_file(cfg, buf, tensors, build, limit, limit_text):
    """Determinism (a second build), the read-back of the bytes, the size. -> the tensors read back."""
    buf2 = build()[0]
    check(buf == buf2, "two builds give identical bytes")
    meta, back = safetensors_read(buf)
    check(json.loads(meta["config"]) == cfg and sorted(back) == sorted(tensors)
          and all(np.array_equal(back[n], tensors[n]) and back[n].dtype == tensors[n].dtype
                  for n in tensors),
          "safetensors read-back")
    check(len(buf) < limit, "fixture size %d bytes < %s" % (len(buf), limit_text))
    return back


def check_tensor_names(back, init, inputs, extra=(), in_teacher=None):
    """The tensors read back are exactly the README's: student.<name>, the
    inputs named, expect.<key> of y, pred, loss, the extra keys and the
    per-step series, expect.grad.<name>, expect.student.<name>,
    expect.teacher.<name> of what in_teacher keeps (default all)."""
    want = (["student." + n for n in init] + list(inputs)
            + ["expect." + k for k in ("y", "pred", "loss", "grad_norm", "lr", "tau", "losses")
               + tuple(extra)]
            + ["expect.%s.%s" % (k, n) for k in ("grad", "student") for n in init]
            + ["expect.teacher." + n for n in init if in_teacher is None or in_teacher(n)])
    check(sorted(back) == sorted(want), "tensor names: %d, exactly the README's" % len(want))


def summary(rec):
    print("loss0     ", "%.9f" % float(rec["loss"]))
    print("losses    ", " ".join("%.9f" % v for v in rec["losses"]))
    print("grad_norm ", " ".join("%.9f" % v for v in rec["grad_norm"]))
    print("lr        ", rec["lr"])
    print("tau       ", rec["tau"])


def finish(script, out, buf, tensors):
    """Exit 1 without writing when a check failed; else write the fixture."""
    if FAILED:
        print("%s: %d check(s) failed; %s not written" % (script, len(FAILED), out))
        sys.exit(1)
    with open(out, "wb") as fh:
        fh.write(buf)
    print("wrote %s (%d bytes, %d tensors)" % (out, len(buf), len(tensors)))


# ---------------------------------------------------------------------------
# Run on its own: a few helpers against what the README says of them.

def main():
    cfg = {"lr": 1e-3, "min_lr": 0, "warmup": 2, "max_update": 5,
           "ema_decay": 0.9, "ema_end_decay": 0.99, "ema_anneal_end_step": 4}
    check_schedules({"lr": [lr_at(cfg, k) for k in range(5)],
                     "tau": [tau_at(cfg, k + 1) for k in range(5)]})
    check(lr_at(dict(cfg, lr_schedule="cosine"), 3) == lr_at(cfg, 3),
          "lr_schedule \"cosine\" is the default")
    tri = dict(cfg, lr_schedule="tri_stage", warmup=2, hold=3, max_update=9,
               init_lr_scale=0.01, final_lr_scale=0.05)
    want = [1e-5, 5.05e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3 * 0.05 ** 0.25, 1e-3 * 0.05 ** 0.5,
            1e-3 * 0.05 ** 0.75, 5e-5, 5e-5, 5e-5]
    got = [lr_at(tri, k) for k in range(12)]
    stages = [tri_stage_stage(tri, k)[0] for k in range(12)]
    check(all(abs(a - b) < 1e-18 for a, b in zip(got, want))
          and stages == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3],
          "tri_stage lr: warmup from 0.01 lr, hold, exponential decay to 0.05 lr at "
          "max_update, then constant")
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 255], dtype=np.uint8),
         "c": np.array([[-1, 7]], dtype=np.int32)}
    buf = safetensors_bytes(t, {"config": "{}"})
    meta, back = safetensors_read(buf)
    (n,) = struct.unpack("<Q", buf[:8])
    check(n % 8 == 0 and meta == {"config": "{}"} and sorted(back) == sorted(t)
          and all(np.array_equal(back[k], t[k]) and back[k].dtype == t[k].dtype for k in t),
          "safetensors round trip (U8, I32, F32; header padded to 8 bytes)")
    check_sincos(sincos_2d(4, 32), 4, 32)
    check(runs([1, 1, 0, 1, 0, 0, 1, 1, 1]) == [2, 1, 3] and runs([0, 0]) == [],
          "runs counts the maximal runs of ones")
    g = torch.Generator().manual_seed(8)
    xc, wc = torch.randn(2, 4, 11, generator=g), torch.randn(6, 2, 3, generator=g)
    bc = torch.randn(6, generator=g)
    check(close(conv1d_ref(xc, wc, bc, stride=2, pad=1, groups=2),
                F.conv1d(xc, wc, bc, stride=2, padding=1, groups=2), 1e-12, 1e-12),
          "conv1d_ref equals F.conv1d (stride, padding, groups)")
    check_gelu(torch.randn(4, 6, generator=torch.Generator().manual_seed(2)))
    p = {"blocks.0.attn.qkv.weight": torch.randn(24, 8, generator=torch.Generator().manual_seed(4)),
         "blocks.0.attn.qkv.bias": torch.randn(24, generator=torch.Generator().manual_seed(5)),
         "blocks.0.attn.proj.weight": torch.randn(8, 8, generator=torch.Generator().manual_seed(6)),
         "blocks.0.attn.proj.bias": torch.randn(8, generator=torch.Generator().manual_seed(7))}
    xs = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))
    check(close(attention(p, "blocks.0.", xs, 2), mha_ref(p, "blocks.0.", xs, 2), 1e-12, 1e-12),
          "attention equals F.multi_head_attention_forward")
    if FAILED:
        print("refcommon.py: %d check(s) failed" % len(FAILED))
        sys.exit(1)
    print("refcommon.py: shared helpers of the tests/ref scripts; nothing written")


if __name__ == "__main__":
    main()
