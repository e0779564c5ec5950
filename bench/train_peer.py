#!/usr/bin/python3
"""bench/train_peer.py: time one data2vec 2.0 training step (image or audio) in PyTorch.

A benchmark peer for d2v (run with /usr/bin/python3, Debian's torch + numpy).
The models are those of tests/ref/README.md, and the functional module code
below is adapted from tests/ref/v2_image.py and tests/ref/v2_audio.py (which
cannot be imported as they are: they set float64 as the default dtype and pin
one thread at import), made general over the configuration and float32
(optionally bf16 autocast).

Image (tiny, B1, B2): one timed step, in the order of ../shared/DATA2VEC.md §14:
  teacher forward (no grad, B full images) -> targets y, cls target;
  student: patch embed of the B images, gather the kept tokens of the B*M
  masked copies, CLS + context LN + prenet and main post-LN AltBlocks;
  decoder input (kept rows back in place, fresh N(0, 0.01^2) noise in the
  masked slots), 2-D grouped-conv decoder, projection; masked L2 loss scaled
  1/sqrt(D) plus the CLS term; backward; global-norm clipping (4.0);
  fairseq Adam with decoupled weight decay and the cosine lr; EMA update of
  the teacher (every non-decoder parameter).
Images and masks are drawn once before timing (random u8 pixels, random
masks with the same number of masked tokens per row); the decoder noise is
drawn inside every step.

Audio (B3, the model of tests/ref/v2_audio.py at B3's sizes): one timed step:
  feature encoder (7 convs without bias, LN over channels + GELU each;
  feature LN, projection to D) of the B clips, once, with grad: feat;
  teacher (no grad) on feat (the student's features, detached): its own
  conv-pos (x + pos(x)), context LN, blocks with ALiBi over all N frames;
  targets y = mean of the instance-normalised FFN outputs of the top K
  blocks (no final norm);
  student: feat repeated M times per clip, masked frames zeroed, conv-pos
  over the full rows, gather of the kept frames, context LN and post-LN
  AltBlocks with ALiBi gathered at the kept positions (learned per-head
  scales); decoder input (kept rows back in place, fresh N(0, 0.01^2) noise
  in the masked slots), 1-D grouped-conv decoder, projection; masked L2 loss
  scaled 1/sqrt(D); backward; global norm (clip 0: no clipping); fairseq
  Adam (weight decay not on alibi_scale) and the cosine lr; EMA update of
  the teacher's own parameters (conv-pos, alibi_scale, context LN, blocks;
  the feature encoder and projection are shared, the teacher has no copy).
Clips (N(0, 1) samples, used as given) and masks (uniformly random
positions, the same count per row) are drawn once before timing; the
decoder noise inside every step.

  --config tiny|B1|B2|B3|demo   --threads N   --steps 20   --warmup 3   --bf16
  --compile (torch.compile around forward and loss)   --json
  --verify   check the model code against tests/ref/v2_image_tiny.safetensors
             (float64, 5 steps) and exit
"""

import argparse
import collections
import json
import math
import os
import resource
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Configurations.

COMMON = dict(
    norm_eps=1e-6, decoder_residual=True, mask_noise_std=0.01, cls_loss=0.01,
    loss_scale=0,
    # v2 image base recipe (DATA2VEC.md §9, §5.1)
    lr=1e-3, min_lr=0.0, warmup=50040, max_update=375300,
    beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.05, clip_norm=4.0,
    ema_decay=0.9998, ema_end_decay=0.99999, ema_anneal_end_step=100000,
    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
)

# v2 audio base recipe (DATA2VEC.md §§2.2, 5.1, 8.2, 9); every dropout and
# layerdrop 0 (the step is deterministic up to the decoder noise).
AUDIO_COMMON = dict(
    modality="audio", norm_eps=1e-5, decoder_residual=True, mask_noise_std=0.01,
    loss_scale=0,
    lr=7.5e-4, min_lr=0.0, warmup=8000, max_update=400000,
    beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.01, clip_norm=0.0,
    ema_decay=0.999, ema_end_decay=0.99999, ema_anneal_end_step=75000,
)

CONFIGS = {
    # B1/B2: ViT-Tiny/Small width, base recipe split 2 prenet + 10 main, K = 10
    "B1": dict(image_size=224, patch=16, channels=3, dim=192, heads=3, mlp_dim=768,
               prenet_depth=2, depth=10, top_k=10,
               decoder_dim=192, decoder_kernel=3, decoder_layers=6, decoder_groups=16,
               clone=8, batch=4, n_mask=157),
    "B2": dict(image_size=224, patch=16, channels=3, dim=384, heads=6, mlp_dim=1536,
               prenet_depth=2, depth=10, top_k=10,
               decoder_dim=384, decoder_kernel=3, decoder_layers=6, decoder_groups=16,
               clone=8, batch=4, n_mask=157),
    # make demo's model: Fashion-MNIST, 28-pixel images in 4-pixel patches
    # (49 tokens, 32 masked), width 96, 6 blocks, 4 copies, 64 images
    "demo": dict(image_size=28, patch=4, channels=1, dim=96, heads=3, mlp_dim=384,
                 prenet_depth=0, depth=6, top_k=6,
                 decoder_dim=64, decoder_kernel=3, decoder_layers=3, decoder_groups=8,
                 clone=4, batch=64, n_mask=32),
    # quick test: 7x7 = 49 tokens; decoder_dim != dim, so layer 0 has no residual
    "tiny": dict(image_size=28, patch=4, channels=3, dim=64, heads=2, mlp_dim=256,
                 prenet_depth=1, depth=2, top_k=2,
                 decoder_dim=32, decoder_kernel=3, decoder_layers=2, decoder_groups=4,
                 clone=2, batch=2, n_mask=37),
    # B3: v2 audio, B2's width (base: D 768, 12 heads, decoder 384): 4 clips of
    # 5 s at 16 kHz -> N = 249 frames, 125 masked per row (124 kept)
    "B3": dict(modality="audio", samples=80000, conv_dim=512,
               dim=384, heads=6, mlp_dim=1536, prenet_depth=0, depth=12, top_k=8,
               pos_conv_depth=5, pos_conv_kernel=19, pos_conv_groups=16,
               decoder_dim=192, decoder_kernel=7, decoder_layers=4, decoder_groups=16,
               clone=8, batch=4, n_mask=125),
}

# (kernel, stride) of the 7 feature-encoder convolutions (DATA2VEC.md §2.2)
FEATURE_CONV = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2


def conv_len(t):
    """Frames out of the feature encoder for t samples."""
    for k, s in FEATURE_CONV:
        t = (t - k) // s + 1
    return t


def is_audio(c):
    return c.get("modality") == "audio"


def make_cfg(name):
    c = dict(AUDIO_COMMON if is_audio(CONFIGS[name]) else COMMON)
    c.update(CONFIGS[name])
    c["name"] = name
    return c


def derived(c):
    if is_audio(c):
        c["N"] = conv_len(c["samples"])
        assert c["dim"] % c["pos_conv_groups"] == 0
    else:
        g = c["image_size"] // c["patch"]
        c["grid"] = g
        c["N"] = g * g
    c["NB"] = c["prenet_depth"] + c["depth"]
    c["head_dim"] = c["dim"] // c["heads"]
    assert c["dim"] % c["heads"] == 0 and c["dim"] % 4 == 0
    assert c["dim"] % c["decoder_groups"] == 0 and c["decoder_dim"] % c["decoder_groups"] == 0
    assert 0 < c["n_mask"] < c["N"]
    return c


# ---------------------------------------------------------------------------
# FLOPs of one step.
#
# Only matrix products and convolutions are counted, 2 FLOPs per
# multiply-add; LayerNorm, softmax, GELU, the loss and the optimizer are not.
# With R rows of T tokens (T includes the CLS token), width D, FFN width F:
#   block(R, T)  = R * (2*T*D*3D  [qkv]  + 2*T*T*D [q k^T] + 2*T*T*D [a v]
#                      + 2*T*D*D  [proj] + 2*T*D*F [fc1]   + 2*T*F*D [fc2])
#                = R * (8*T*D^2 + 4*T*D*F + 4*T^2*D)
#   embed(B)     = 2 * B * N * D * C * P^2                  (patch conv)
#   decoder(R)   = sum_j 2*R*N*Dd*(Cin_j/G)*k^2 + 2*R*N*Dd*D (convs + proj)
#   student_fwd  = embed(B) + NB * block(B*M, 1 + N - n_mask) + decoder(B*M)
#   teacher_fwd  = embed(B) + NB * block(B, 1 + N)
#   step         = 3 * student_fwd + 1 * teacher_fwd
# (the factor 3 is the usual forward + backward = 3 x forward convention).

def step_flops(c):
    if is_audio(c):
        return audio_step_flops(c)
    D, F_, N, B, M = c["dim"], c["mlp_dim"], c["N"], c["batch"], c["clone"]

    def block(R, T):
        return R * (8 * T * D * D + 4 * T * D * F_ + 4 * T * T * D)

    embed = 2 * B * N * D * c["channels"] * c["patch"] ** 2
    dec = 0
    for j in range(c["decoder_layers"]):
        cin = D if j == 0 else c["decoder_dim"]
        dec += 2 * B * M * N * c["decoder_dim"] * (cin // c["decoder_groups"]) * c["decoder_kernel"] ** 2
    dec += 2 * B * M * N * c["decoder_dim"] * D
    student = embed + c["NB"] * block(B * M, 1 + N - c["n_mask"]) + dec
    teacher = embed + c["NB"] * block(B, 1 + N)
    return 3 * student + teacher, student, teacher


# Audio (B3), same rules (no CLS token; ALiBi's bias add is not counted).
# Feature conv i: kernel k_i, T_i output frames (T_0 = floor((S - 10)/5) + 1,
# ..., T_6 = N), C channels, Cin_0 = 1, else C; conv-pos: P layers of kernel
# kp and g groups; V = N - n_mask kept frames:
#   features(B)  = sum_i 2*B*T_i*C*Cin_i*k_i + 2*B*N*C*D     (convs + proj)
#   pos(R)       = P * 2*R*N*D*(D/g)*kp                      (full rows)
#   decoder(R)   = sum_j 2*R*N*Dd*(Cin_j/G)*k + 2*R*N*Dd*D   (1-D convs + proj)
#   student_fwd  = features(B) + pos(B*M) + NB * block(B*M, V) + decoder(B*M)
#   teacher_fwd  = pos(B) + NB * block(B, N)
#   step         = 3 * student_fwd + 1 * teacher_fwd
# The feature encoder runs once (the teacher reads the student's features),
# so it is in student_fwd only; its first conv has no input gradient to
# compute, but it is counted 3x like every trained part (its forward is
# 0.07% of the step's count at B3).

def audio_step_flops(c):
    D, F_, N, B, M = c["dim"], c["mlp_dim"], c["N"], c["batch"], c["clone"]
    C, R, V = c["conv_dim"], B * M, N - c["n_mask"]

    def block(rows, T):
        return rows * (8 * T * D * D + 4 * T * D * F_ + 4 * T * T * D)

    feat, t = 0, c["samples"]
    for i, (k, st) in enumerate(FEATURE_CONV):
        t = (t - k) // st + 1
        feat += 2 * B * t * C * (1 if i == 0 else C) * k
    assert t == N
    feat += 2 * B * N * C * D

    def pos(rows):
        return c["pos_conv_depth"] * 2 * rows * N * D * (D // c["pos_conv_groups"]) * c["pos_conv_kernel"]

    dec = 0
    for j in range(c["decoder_layers"]):
        cin = D if j == 0 else c["decoder_dim"]
        dec += 2 * R * N * c["decoder_dim"] * (cin // c["decoder_groups"]) * c["decoder_kernel"]
    dec += 2 * R * N * c["decoder_dim"] * D
    student = feat + pos(R) + c["NB"] * block(R, V) + dec
    teacher = pos(B) + c["NB"] * block(B, N)
    return 3 * student + teacher, student, teacher


# ---------------------------------------------------------------------------
# Parameters (names and layouts of tests/ref/README.md).

def block_and_decoder_shapes(s, c, one_d):
    """Add the NB post-LN blocks, then the decoder (2-D convolutions, or
    1-D for audio) and its projection, to s."""
    D, FF, DD, K = c["dim"], c["mlp_dim"], c["decoder_dim"], c["decoder_kernel"]
    for i in range(c["NB"]):
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
    for j in range(c["decoder_layers"]):
        cin = D if j == 0 else DD
        p = "decoder.layers.%d.conv." % j
        s[p + "weight"] = (DD, cin // c["decoder_groups"]) + ((K,) if one_d else (K, K))
        s[p + "bias"] = (DD,)
    s["decoder.proj.weight"] = (D, DD)
    s["decoder.proj.bias"] = (D,)


def param_shapes(c):
    if is_audio(c):
        return audio_param_shapes(c)
    D, C, P = c["dim"], c["channels"], c["patch"]
    s = collections.OrderedDict()
    s["patch_embed.weight"] = (D, C, P, P)
    s["patch_embed.bias"] = (D,)
    s["cls_token"] = (1, 1, D)
    s["context_norm.weight"] = (D,)
    s["context_norm.bias"] = (D,)
    block_and_decoder_shapes(s, c, 0)
    return s


def audio_param_shapes(c):
    """tests/ref/README.md v2_audio's names and layouts."""
    D, C = c["dim"], c["conv_dim"]
    s = collections.OrderedDict()
    for i, (k, _) in enumerate(FEATURE_CONV):
        p = "feature_extractor.conv_layers.%d." % i
        s[p + "conv.weight"] = (C, 1 if i == 0 else C, k)
        s[p + "norm.weight"] = (C,)
        s[p + "norm.bias"] = (C,)
    s["feature_norm.weight"] = (C,)
    s["feature_norm.bias"] = (C,)
    s["feature_proj.weight"] = (D, C)
    s["feature_proj.bias"] = (D,)
    for j in range(c["pos_conv_depth"]):
        s["pos_conv.%d.weight" % j] = (D, D // c["pos_conv_groups"], c["pos_conv_kernel"])
        s["pos_conv.%d.bias" % j] = (D,)
    s["alibi_scale"] = (1, 1, c["heads"], 1, 1)
    s["context_norm.weight"] = (D,)
    s["context_norm.bias"] = (D,)
    block_and_decoder_shapes(s, c, 1)
    return s


def init_params(c, gen, dtype):
    """As v2_image.py / v2_audio.py: weights N(0, 1/fan_in), biases N(0, 0.02),
    LN weight 1 + N(0, 0.1), LN bias N(0, 0.05), cls_token N(0, 1),
    alibi_scale |1 + 0.1 N(0, 1)|."""
    out = collections.OrderedDict()
    for name, shape in param_shapes(c).items():
        z = torch.randn(shape, generator=gen, dtype=dtype)
        if name == "cls_token":
            v = z
        elif name == "alibi_scale":
            v = (1.0 + 0.1 * z).abs()
        elif "norm" in name and name.endswith(".weight"):
            v = 1.0 + 0.1 * z
        elif "norm" in name and name.endswith(".bias"):
            v = 0.05 * z
        elif name.endswith(".bias"):
            v = 0.02 * z
        else:
            v = z / math.sqrt(int(np.prod(shape[1:])))
        out[name] = v.contiguous()
    return out


def decayed(name, t):
    return t.dim() > 1 and not name.endswith(".bias") and name != "alibi_scale"


# ---------------------------------------------------------------------------
# Model (functional; p is a dict name -> tensor).

def sincos_2d(c, dtype):
    """[N, D]: first D/2 dims encode the column, last D/2 the row; each half is
    [sin(p*w_k), cos(p*w_k)], w_k = 10000^(-k/(D/4)), k = 0..D/4-1."""
    D, G = c["dim"], c["grid"]
    q = D // 4
    omega = torch.tensor([10000.0 ** (-k / q) for k in range(q)], dtype=torch.float64)
    pos = torch.arange(G, dtype=torch.float64)
    col = pos.repeat(G)                    # token n = row*G + col
    row = pos.repeat_interleave(G)
    ac, ar = col[:, None] * omega, row[:, None] * omega
    tab = torch.cat([torch.sin(ac), torch.cos(ac), torch.sin(ar), torch.cos(ar)], dim=1)
    return tab.to(dtype)


class Model:
    def __init__(self, c, dtype):
        self.c = c
        self.pos = sincos_2d(c, dtype)
        C = c["channels"]
        self.mean = torch.tensor(c["mean"][:C], dtype=dtype).view(1, C, 1, 1)
        self.std = torch.tensor(c["std"][:C], dtype=dtype).view(1, C, 1, 1)
        self.dtype = dtype

    def embed(self, p, x_u8):
        """u8 [B, C, S, S] -> tokens + sin-cos [B, N, D]."""
        x = (x_u8.to(self.dtype) / 255.0 - self.mean) / self.std
        t = F.conv2d(x, p["patch_embed.weight"], p["patch_embed.bias"], stride=self.c["patch"])
        return t.flatten(2).transpose(1, 2) + self.pos

    def attention(self, p, pre, x, bias=None):
        """bias [R, H, T, T] (audio's ALiBi), added to the scaled logits."""
        c = self.c
        R, T, D = x.shape
        H, HD = c["heads"], c["head_dim"]
        qkv = F.linear(x, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"])
        qkv = qkv.reshape(R, T, 3, H, HD).permute(2, 0, 3, 1, 4)    # [3, R, H, T, HD]
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q * HD ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        a = torch.softmax(logits, dim=-1)
        o = (a @ v).transpose(1, 2).reshape(R, T, D)
        return F.linear(o, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])

    def block(self, p, i, x, bias=None):
        """Post-LN AltBlock -> (out, f), f the FFN output before the residual."""
        pre = "blocks.%d." % i
        D, eps = self.c["dim"], self.c["norm_eps"]
        x = x + self.attention(p, pre, x, bias)
        r = F.layer_norm(x, (D,), p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps)
        f = F.linear(F.gelu(F.linear(r, p[pre + "mlp.fc1.weight"], p[pre + "mlp.fc1.bias"])),
                     p[pre + "mlp.fc2.weight"], p[pre + "mlp.fc2.bias"])
        out = F.layer_norm(r + f, (D,), p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps)
        return out, f

    def encoder(self, p, tokens, keep_f_from=None):
        """tokens [R, T, D] (no CLS) -> (h [R, 1+T, D], FFN outputs of blocks >= keep_f_from)."""
        R, _, D = tokens.shape
        cls = p["cls_token"].expand(R, 1, D).to(tokens.dtype)
        h = torch.cat([cls, tokens], dim=1)
        h = F.layer_norm(h, (D,), p["context_norm.weight"], p["context_norm.bias"],
                         self.c["norm_eps"])
        fs = []
        for i in range(self.c["NB"]):
            h, f = self.block(p, i, h)
            if keep_f_from is not None and i >= keep_f_from:
                fs.append(f)
        return h, fs

    def decoder(self, p, z):
        """z [R, N, D] -> pred [R, N, D]."""
        c = self.c
        R, N, D = z.shape
        G = c["grid"]
        z = z.transpose(1, 2).reshape(R, D, G, G)
        for j in range(c["decoder_layers"]):
            pre = "decoder.layers.%d.conv." % j
            y = F.conv2d(z, p[pre + "weight"], p[pre + "bias"], padding=c["decoder_kernel"] // 2,
                         groups=c["decoder_groups"])
            # LayerNorm over channels at every pixel, no affine, eps 1e-5
            y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), eps=1e-5).permute(0, 3, 1, 2)
            y = F.gelu(y)
            if c["decoder_residual"] and y.shape[1] == z.shape[1]:
                y = y + z
            z = y
        z = z.reshape(R, c["decoder_dim"], N).transpose(1, 2)
        return F.linear(z, p["decoder.proj.weight"], p["decoder.proj.bias"])

    def student_forward(self, p, x_u8, src_rows, dst_rows, noise):
        """-> pred [B*M, N, D], h_cls [B*M, D].
        src_rows: flat indices (image*N + n) of the kept tokens of every row,
        dst_rows: flat indices (row*N + n) of the same slots in the decoder input."""
        c = self.c
        D = c["dim"]
        R = noise.shape[0]
        x = self.embed(p, x_u8)                                       # [B, N, D]
        kept = x.reshape(-1, D).index_select(0, src_rows).view(R, -1, D)
        h, _ = self.encoder(p, kept)
        body = h[:, 1:].reshape(-1, D).to(noise.dtype)
        z = noise.reshape(-1, D).index_copy(0, dst_rows, body).view(R, c["N"], D)
        return self.decoder(p, z), h[:, 0]

    def teacher_targets(self, p, x_u8):
        """-> y [B, N, D] (float32/64), target_cls [B, D]."""
        c = self.c
        assert 0 < c["top_k"] <= c["depth"]
        _, fs = self.encoder(p, self.embed(p, x_u8),
                             keep_f_from=c["prenet_depth"] + c["depth"] - c["top_k"])
        acc = None
        for f in fs:                                 # main blocks only (top_k <= depth)
            f = f[:, 1:].to(self.dtype)
            n = F.instance_norm(f.transpose(1, 2), eps=1e-5).transpose(1, 2)
            acc = n if acc is None else acc + n
        y = F.layer_norm(acc / len(fs), (c["dim"],), eps=1e-5)
        return y, y.mean(dim=1)

    def loss(self, pred, h_cls, y, tcls, maskf, n_mask):
        """maskf [B*M, N] float (1 = masked)."""
        c = self.c
        M = c["clone"]
        s = c["loss_scale"] if c["loss_scale"] else 1.0 / math.sqrt(c["dim"])
        per_tok = ((pred - y.repeat_interleave(M, 0)) ** 2).sum(-1)      # [B*M, N]
        reg = s * (per_tok * maskf).sum()
        cls = c["cls_loss"] * n_mask * s * ((h_cls - tcls.repeat_interleave(M, 0)) ** 2).sum()
        return (reg + cls) / n_mask


def alibi_slopes(n):
    """fairseq's get_slopes (DATA2VEC.md §2.2), any head count (6: 2^-2, 2^-4,
    2^-6, 2^-8, 2^-1, 2^-3)."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))              # 2^(-8/n)
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    c = 2 ** math.floor(math.log2(n))
    return power_of_2(c) + alibi_slopes(2 * c)[0::2][: n - c]


class AudioModel(Model):
    """v2_audio.py's model (attention and AltBlock inherited, with the ALiBi bias).

    GELU after a LayerNorm over channels is applied to the channel-first view
    (gelu(ln(h^T)^T), not gelu(ln(h^T))^T): this torch (Debian 1.13.0a0) has a
    CPU gelu_backward (erf) that is wrong -- garbage, often NaN -- when its
    incoming gradient is non-contiguous and its input contiguous, which is
    what the transposed form gets from the next conv. Same values either way.
    """

    def __init__(self, c, dtype):
        self.c, self.dtype = c, dtype
        self.slopes = torch.tensor(alibi_slopes(c["heads"]), dtype=dtype)

    @staticmethod
    def ln(x, w, b, eps):
        """Affine LayerNorm over the last dim in the weights' dtype: float32
        under bf16 autocast (fairseq's Fp32LayerNorm in the feature encoder;
        this torch's CPU autocast leaves layer_norm alone and refuses a bf16
        input with float32 weights). A no-op cast in float32."""
        return F.layer_norm(x.to(w.dtype), (x.shape[-1],), w, b, eps)

    def features(self, p, wave):
        """wave [B, S] -> feat [B, N, D]: 7 x (Conv1d, no bias -> LN over the C
        channels (affine, eps 1e-5) -> GELU), feature_norm, feature_proj."""
        h = wave.unsqueeze(1)
        for i, (_, st) in enumerate(FEATURE_CONV):
            pre = "feature_extractor.conv_layers.%d." % i
            h = F.conv1d(h, p[pre + "conv.weight"], stride=st)
            h = F.gelu(self.ln(h.transpose(1, 2), p[pre + "norm.weight"],
                               p[pre + "norm.bias"], 1e-5).transpose(1, 2))
        h = self.ln(h.transpose(1, 2), p["feature_norm.weight"], p["feature_norm.bias"], 1e-5)
        return F.linear(h, p["feature_proj.weight"], p["feature_proj.bias"])

    def pos_encode(self, p, z):
        """z [R, T, D] -> z + pos(z): pos_conv_depth x (grouped Conv1d, padding
        k//2, bias -> LN over channels, no affine, eps 1e-5 -> GELU)."""
        c = self.c
        y = z.transpose(1, 2)
        for j in range(c["pos_conv_depth"]):
            y = F.conv1d(y, p["pos_conv.%d.weight" % j], p["pos_conv.%d.bias" % j],
                         padding=c["pos_conv_kernel"] // 2, groups=c["pos_conv_groups"])
            y = F.gelu(F.layer_norm(y.transpose(1, 2), (y.shape[1],), eps=1e-5).transpose(1, 2))
        return z + y.transpose(1, 2)

    def alibi(self, p, dist):
        """dist [R, 1, T, T] = |p_i - p_j| at the original frame indices ->
        bias [R, H, T, T] = -m_h * max(alibi_scale_h, 0) * dist."""
        H = self.c["heads"]
        scale = p["alibi_scale"].reshape(H).clamp(min=0)
        return -(self.slopes * scale).view(1, H, 1, 1) * dist

    def encoder(self, p, x, dist, keep_f_from=None):
        """x [R, T, D] -> (h, FFN outputs of blocks >= keep_f_from): context_norm,
        then every block with the ALiBi bias (no CLS token)."""
        bias = self.alibi(p, dist)
        h = self.ln(x, p["context_norm.weight"], p["context_norm.bias"], self.c["norm_eps"])
        fs = []
        for i in range(self.c["NB"]):
            h, f = self.block(p, i, h, bias)
            if keep_f_from is not None and i >= keep_f_from:
                fs.append(f)
        return h, fs

    def decoder(self, p, z):
        """z [R, N, D] -> pred [R, N, D]: 1-D grouped convs (padding k//2, bias)
        -> LN over channels (no affine, eps 1e-5) -> GELU (+ input when the
        widths match), then decoder.proj."""
        c = self.c
        z = z.transpose(1, 2)
        for j in range(c["decoder_layers"]):
            pre = "decoder.layers.%d.conv." % j
            y = F.conv1d(z, p[pre + "weight"], p[pre + "bias"], padding=c["decoder_kernel"] // 2,
                         groups=c["decoder_groups"])
            y = F.gelu(F.layer_norm(y.transpose(1, 2), (y.shape[1],), eps=1e-5).transpose(1, 2))
            if c["decoder_residual"] and y.shape[1] == z.shape[1]:
                y = y + z
            z = y
        return F.linear(z.transpose(1, 2), p["decoder.proj.weight"], p["decoder.proj.bias"])

    def student_forward(self, p, feat, keepf, kept_rows, dst_rows, dist, noise):
        """feat [B, N, D] -> pred [B*M, N, D]. keepf [B*M, N, 1] (1 = kept);
        kept_rows: flat indices (row*N + n) of the kept frames, ascending in
        every row (the same slots in the decoder input); dist [B*M, 1, V, V]."""
        c = self.c
        D, M = c["dim"], c["clone"]
        R = noise.shape[0]
        z = feat.repeat_interleave(M, dim=0) * keepf.to(feat.dtype)   # masked frames zeroed
        x = self.pos_encode(p, z)                                      # on the full rows
        kept = x.reshape(-1, D).index_select(0, kept_rows).view(R, -1, D)
        h, _ = self.encoder(p, kept, dist)
        body = h.reshape(-1, D).to(noise.dtype)
        z = noise.reshape(-1, D).index_copy(0, dst_rows, body).view(R, c["N"], D)
        return self.decoder(p, z)

    def teacher_targets(self, tp, feat, dist):
        """feat [B, N, D] (the student's, detached) -> y [B, N, D]: the
        teacher's conv-pos, context_norm, blocks; instance norm of the top_k
        FFN outputs over the frames, averaged; no final norm."""
        c = self.c
        assert 0 < c["top_k"] <= c["depth"]
        _, fs = self.encoder(tp, self.pos_encode(tp, feat), dist,
                             keep_f_from=c["prenet_depth"] + c["depth"] - c["top_k"])
        acc = None
        for f in fs:
            f = f.to(self.dtype)
            n = F.instance_norm(f.transpose(1, 2), eps=1e-5).transpose(1, 2)
            acc = n if acc is None else acc + n
        return acc / len(fs)

    def loss(self, pred, y, maskf, n_mask):
        """Masked L2 x loss_scale (0: 1/sqrt(D)) over the masked frames / n_mask."""
        c = self.c
        s = c["loss_scale"] if c["loss_scale"] else 1.0 / math.sqrt(c["dim"])
        per_tok = ((pred - y.repeat_interleave(c["clone"], 0)) ** 2).sum(-1)   # [B*M, N]
        return s * (per_tok * maskf).sum() / n_mask


# ---------------------------------------------------------------------------
# Schedules.

def lr_at(c, k):
    lr, lo, w, T = c["lr"], c["min_lr"], c["warmup"], c["max_update"]
    if k < w:
        return lo + (lr - lo) * k / w
    return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * (k - w) / (T - w)))


def tau_at(c, t):
    a, e, n = c["ema_decay"], c["ema_end_decay"], c["ema_anneal_end_step"]
    return e - (e - a) * max(0.0, 1.0 - t / n)


# ---------------------------------------------------------------------------
# Trainer: one full step.

class Trainer:
    """The image step (tiny, B1, B2); AudioTrainer below overrides __init__
    and forward_loss. step() = forward_loss + backward + update."""

    def __init__(self, c, params, x_u8, mask_u8, dtype, bf16=False, teacher_all=False):
        self.model = Model(c, dtype)
        # teacher: every non-decoder parameter (teacher_all: every parameter,
        # as the tiny fixture's EMA does; the decoder copy is never used)
        self.setup(c, params, dtype, bf16, lambda n: teacher_all or not n.startswith("decoder."))
        self.x_u8 = x_u8
        B, M, N = c["batch"], c["clone"], c["N"]
        R = B * M
        assert mask_u8.shape == (R, N)
        counts = mask_u8.sum(1)
        assert bool((counts == counts[0]).all()), "every row needs the same masked count"
        keep = torch.nonzero(mask_u8 == 0)           # row-major: ascending within each row
        r, n = keep[:, 0], keep[:, 1]
        self.src_rows = (r // M) * N + n
        self.dst_rows = r * N + n
        self.maskf = mask_u8.to(dtype)
        self.n_mask = int(mask_u8.sum())

    def setup(self, c, params, dtype, bf16, in_teacher):
        """Student leaves, the teacher's EMA copies (names with in_teacher(name)),
        Adam moments, the decayed indices."""
        self.c, self.dtype, self.bf16 = c, dtype, bf16
        self.names = list(params)
        self.sp = collections.OrderedDict(
            (n, t.clone().to(dtype).requires_grad_(True)) for n, t in params.items())
        self.ema_names = [n for n in self.names if in_teacher(n)]
        self.tp = collections.OrderedDict((n, self.sp[n].detach().clone()) for n in self.ema_names)
        self.m = [torch.zeros_like(t) for t in self.sp.values()]
        self.v = [torch.zeros_like(t) for t in self.sp.values()]
        self.plist = list(self.sp.values())
        self.dec_idx = [i for i, n in enumerate(self.names) if decayed(n, self.sp[n])]
        self.k = 0

    def autocast(self):
        if self.bf16:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return torch.autocast(device_type="cpu", enabled=False)

    def forward_loss(self, noise):
        c, mdl = self.c, self.model
        # 1. teacher (no grad)
        with torch.no_grad(), self.autocast():
            y, tcls = mdl.teacher_targets(self.tp, self.x_u8)
        y, tcls = y.to(self.dtype), tcls.to(self.dtype)
        # 2. student, decoder
        with self.autocast():
            pred, h_cls = mdl.student_forward(self.sp, self.x_u8, self.src_rows, self.dst_rows, noise)
        # 3. loss in fp32
        return mdl.loss(pred.to(self.dtype), h_cls.to(self.dtype), y, tcls, self.maskf, self.n_mask)

    def step(self, noise=None):
        c = self.c
        R, N, D = c["batch"] * c["clone"], c["N"], c["dim"]
        if noise is None:
            noise = torch.randn(R, N, D, dtype=self.dtype) * c["mask_noise_std"]
        for t in self.plist:
            t.grad = None
        loss = self.forward_loss(noise)
        # 4. backward
        loss.backward()
        with torch.no_grad():
            grads = [t.grad for t in self.plist]
            # 5. global-norm clipping
            norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
            clip = c["clip_norm"]
            if clip > 0 and norm > clip:
                torch._foreach_mul_(grads, clip / (norm + 1e-6))
            # 6. fairseq Adam, decoupled weight decay
            k = self.k
            lr = lr_at(c, k)
            t = k + 1
            b1, b2 = c["beta1"], c["beta2"]
            step_size = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            torch._foreach_mul_(self.m, b1)
            torch._foreach_add_(self.m, grads, alpha=1 - b1)
            torch._foreach_mul_(self.v, b2)
            torch._foreach_addcmul_(self.v, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(self.v)
            torch._foreach_add_(denom, c["eps"])
            wd = c["weight_decay"]
            if wd and lr:
                torch._foreach_add_([self.plist[i] for i in self.dec_idx],
                                    [self.plist[i] for i in self.dec_idx], alpha=-lr * wd)
            torch._foreach_addcdiv_(self.plist, self.m, denom, value=-step_size)
            # 7. EMA
            tau = tau_at(c, t)
            tl = list(self.tp.values())
            torch._foreach_mul_(tl, tau)
            torch._foreach_add_(tl, [self.sp[n] for n in self.ema_names], alpha=1 - tau)
        self.k += 1
        return float(loss), norm


class AudioTrainer(Trainer):
    """The audio step (B3). The teacher holds its own conv-pos, alibi_scale,
    context_norm and blocks; feature_* are shared (the teacher reads the
    student's features, so it needs no copy of them)."""

    SHARED = ("feature_extractor.", "feature_norm.", "feature_proj.")

    def __init__(self, c, params, wave, mask_u8, dtype, bf16=False):
        self.model = AudioModel(c, dtype)
        self.setup(c, params, dtype, bf16,
                   lambda n: not n.startswith(("decoder.",) + self.SHARED))
        self.wave = wave.to(dtype)
        B, M, N = c["batch"], c["clone"], c["N"]
        R = B * M
        assert wave.shape == (B, c["samples"]) and mask_u8.shape == (R, N)
        counts = mask_u8.sum(1)
        assert bool((counts == counts[0]).all()), "every row needs the same masked count"
        keep = torch.nonzero(mask_u8 == 0)           # row-major: ascending within each row
        r, n = keep[:, 0], keep[:, 1]
        self.kept_rows = r * N + n                   # = the decoder input's slots
        pos = n.view(R, -1).to(dtype)
        self.dist_kept = (pos[:, :, None] - pos[:, None, :]).abs().unsqueeze(1)   # [R, 1, V, V]
        full = torch.arange(N, dtype=dtype)
        self.dist_full = (full[:, None] - full[None, :]).abs().view(1, 1, N, N)
        self.keepf = (mask_u8 == 0).to(dtype).unsqueeze(-1)                     # [R, N, 1]
        self.maskf = mask_u8.to(dtype)
        self.n_mask = int(mask_u8.sum())

    def forward_loss(self, noise):
        mdl = self.model
        # 1. feature encoder (student weights, with grad), once for the B clips
        with self.autocast():
            feat = mdl.features(self.sp, self.wave)
        # 2. teacher (no grad) on the student's features
        with torch.no_grad(), self.autocast():
            y = mdl.teacher_targets(self.tp, feat.detach(), self.dist_full)
        y = y.to(self.dtype)
        # 3. student, decoder
        with self.autocast():
            pred = mdl.student_forward(self.sp, feat, self.keepf, self.kept_rows, self.kept_rows,
                                       self.dist_kept, noise)
        # 4. loss in fp32
        return mdl.loss(pred.to(self.dtype), y, self.maskf, self.n_mask)


# ---------------------------------------------------------------------------
# --verify: the tiny fixture of tests/ref (float64, 5 steps).

def read_safetensors(path):
    with open(path, "rb") as fh:
        buf = fh.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        dt = {"U8": "|u1", "F32": "<f4"}[e["dtype"]]
        out[name] = torch.from_numpy(
            np.frombuffer(buf[8 + n + b: 8 + n + end], dtype=dt).reshape(e["shape"]).copy())
    return meta, out


def verify():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref",
                        "v2_image_tiny.safetensors")
    meta, t = read_safetensors(path)
    c = json.loads(meta["config"])
    mask = t["input.mask"]
    c["batch"] = t["input.x"].shape[0]
    c["n_mask"] = int(mask[0].sum())
    derived(c)
    ok = True
    # float32: the losses agree to ~1e-7, but the key part of attn.qkv.bias has
    # an exactly-zero true gradient (softmax is shift-invariant), so its float32
    # gradient is rounding noise that Adam turns into full +-lr steps; hence the
    # looser parameter tolerance there.
    for dtype, tol, ptol in ((torch.float64, 1e-5, 1e-5), (torch.float32, 1e-5, 1e-2)):
        params = collections.OrderedDict(
            (n[len("student."):], v.to(torch.float64)) for n, v in t.items() if n.startswith("student."))
        tr = Trainer(c, params, t["input.x"], mask, dtype, teacher_all=True)
        losses = []
        for k in range(c["max_update"]):
            loss, _ = tr.step(noise=t["input.noise.%d" % k].to(dtype))
            losses.append(loss)
        want = t["expect.losses"].double()
        lerr = float(((torch.tensor(losses) - want).abs() / want.abs()).max())
        perr = 0.0
        for n in params:
            for who, d in (("student", tr.sp), ("teacher", tr.tp)):
                ref = t["expect.%s.%s" % (who, n)].double()
                got = d[n].detach().double()
                perr = max(perr, float((got - ref).abs().max() / (ref.abs().max() + 1e-12)))
        good = lerr < tol and perr < ptol
        ok &= good
        print("%s verify %-7s 5 steps: losses rel err %.2e (tol %.0e), "
              "student/teacher params rel err %.2e (tol %.0e)" %
              ("ok  " if good else "FAIL", str(dtype).split(".")[-1], lerr, tol, perr, ptol))
    return ok


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch default)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="forward/backward under CPU bf16 autocast")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile around the forward and the loss (PyTorch 2.x)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true", help="per-step times on stderr")
    ap.add_argument("--verify", action="store_true",
                    help="check against tests/ref/v2_image_tiny.safetensors and exit")
    a = ap.parse_args()

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.verify:
        sys.exit(0 if verify() else 1)

    c = derived(make_cfg(a.config))
    gen = torch.Generator().manual_seed(a.seed)
    params = init_params(c, gen, torch.float32)
    B, M, N = c["batch"], c["clone"], c["N"]
    if is_audio(c):
        x = torch.randn(B, c["samples"], generator=gen, dtype=torch.float32)
    else:
        x = torch.randint(0, 256, (B, c["channels"], c["image_size"], c["image_size"]),
                          generator=gen, dtype=torch.uint8)
    mask = torch.zeros(B * M, N, dtype=torch.uint8)
    for r in range(B * M):
        mask[r, torch.randperm(N, generator=gen)[: c["n_mask"]]] = 1
    torch.manual_seed(a.seed)
    tr = (AudioTrainer if is_audio(c) else Trainer)(c, params, x, mask, torch.float32, bf16=a.bf16)
    if a.compile:
        if not hasattr(torch, "compile"):
            print("--compile needs PyTorch 2.x (this is %s)" % torch.__version__, file=sys.stderr)
            sys.exit(2)
        tr.forward_loss = torch.compile(tr.forward_loss)

    times, losses = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss, _ = tr.step()
        dt = time.perf_counter() - t0
        losses.append(loss)
        if a.verbose:
            print("step %d%s: %.1f ms, loss %.5f" % (i, " (warmup)" if i < a.warmup else "",
                                                   dt * 1e3, loss), file=sys.stderr)
        if i >= a.warmup:
            times.append(dt * 1e3)
    if not all(math.isfinite(v) for v in losses):
        print("non-finite loss: %s" % losses, file=sys.stderr)
        sys.exit(1)
    med = statistics.median(times)
    flops, _, _ = step_flops(c)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux
    threads = torch.get_num_threads()
    if a.json:
        print(json.dumps(collections.OrderedDict([
            ("config", a.config), ("threads", threads), ("bf16", a.bf16),
            ("compile", a.compile),
            ("steps", a.steps), ("warmup", a.warmup),
            ("median_ms", round(med, 3)), ("min_ms", round(min(times), 3)),
            ("max_rss_mb", round(rss, 1)),
            ("gflop_per_step", round(flops / 1e9, 3)),
            ("gflops", round(flops / 1e9 / (med / 1e3), 2)),
            ("loss", losses[-1]),
            ("torch", torch.__version__),
        ])))
    else:
        print("train_peer %s threads=%d %s: median %.1f ms/step (min %.1f, %d steps), "
              "%.2f GFLOP/step = %.1f GFLOP/s, peak RSS %.0f MB, loss %.4f -> %.4f" %
              (a.config, threads, "bf16" if a.bf16 else "fp32", med, min(times), len(times),
               flops / 1e9, flops / 1e9 / (med / 1e3), rss, losses[0], losses[-1]))


if __name__ == "__main__":
    main()
