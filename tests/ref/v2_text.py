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

What the references share (checks, safetensors, schedules, the Adam and EMA
training loop, the AltBlock, the text embedding, twins) is in refcommon.py next
to this script.

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(finite-difference gradients, mask counts, teacher == student at step 0, the
loss recomputed term by term, independent twins of attention, embedding,
decoder and norms, determinism, a read-back of the file) and exits non-zero
when a check fails.
"""

import collections
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
PAD = 1                                 # fairseq <pad>; never drawn (see README note)
D = CFG["dim"]
NB = CFG["prenet_depth"] + CFG["depth"]
DD = CFG["decoder_dim"]
K = CFG["decoder_kernel"]
NMASK_ROW = 5                           # masked tokens per row (README)
STEPS = CFG["max_update"]
SEED = 20240607

SHARED = ("embed_tokens.", "embed_positions.", "embed_norm.")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "v2_text_tiny.safetensors")


# ---------------------------------------------------------------------------
# Parameters: names, shapes, layouts of the README; values drawn once.

def param_shapes():
    s = collections.OrderedDict()
    rc.text_embed_shapes(s, CFG)
    rc.altblock_shapes(s, NB, D, CFG["mlp_dim"])
    rc.decoder_conv_shapes(s, CFG, 1)
    s["decoder.proj.0.weight"] = (2 * DD, DD)
    s["decoder.proj.0.bias"] = (2 * DD,)
    s["decoder.proj.1.weight"] = (D, 2 * DD)
    s["decoder.proj.1.bias"] = (D,)
    return s


def is_shared(name):
    return name.startswith(SHARED)


in_teacher = rc.not_decoder


def init_params(rng):
    """refcommon's rule (weights N(0, 1/fan_in), biases N(0, 0.02), LayerNorm
    weight 1 + N(0, 0.1), bias N(0, 0.05)); both embedding tables N(0, 1)
    (every row random; position rows 0 and 1 are never used)."""
    return rc.init_params(param_shapes(), rng, rc.embed_tables_normal)


# ---------------------------------------------------------------------------
# Inputs.

def make_inputs(rng):
    ids = np.array([i for i in range(V_TOK) if i != PAD])
    x = ids[rng.randint(0, len(ids), size=(B, N))].astype(np.int32)     # [B, N]

    # base.py random_masking: uniform noise per token, argsort, keep the first
    # len_keep = N - 5, mask the rest.
    mask = np.stack(rc.distinct_rows(B * M, lambda: rc.keep_row(
        N, np.argsort(rng.rand(N), kind="stable")[: N - NMASK_ROW])))  # [B*M, N]
    return x, mask, rc.decoder_noise(rng, CFG, B * M, N)


# ---------------------------------------------------------------------------
# Model.

def embed(p, x):
    """ids [B, N] -> LN(embed_tokens[x] + embed_positions[n + 2]) [B, N, D]
    (refcommon); the teacher runs on the student's (embed_* shared)."""
    return rc.text_embed(p, x, CFG)


def encoder(p, tokens):
    """tokens [R, T, D] -> (h [R, T, D], FFN outputs of every block).
    prenet_depth 0: no context LayerNorm, no CLS."""
    return rc.altblocks(p, tokens, CFG)


def decoder(p, z):
    """z [R, N, D] -> pred [R, N, D] (Decoder1d, two-layer projection)."""
    z = rc.decoder_convs(p, z.transpose(1, 2), CFG, F.conv1d)   # [R, Dd, N]
    z = z.transpose(1, 2)                                        # [R, N, Dd]
    z = F.gelu(F.linear(z, p["decoder.proj.0.weight"], p["decoder.proj.0.bias"]))
    return F.linear(z, p["decoder.proj.1.weight"], p["decoder.proj.1.bias"])


def student_forward(p, x, mask, noise):
    """-> pred [B*M, N, D], h [B*M, V, D]."""
    t = embed(p, x).repeat_interleave(M, dim=0)                  # [B*M, N, D]
    kept, _, idx3 = rc.gather_kept(t, mask)
    h, _ = encoder(p, kept)
    return decoder(p, rc.decoder_input(h, idx3, mask, noise)), h


def teacher_targets(tp, sp, x):
    """Teacher blocks tp on the STUDENT's embedding sp of the unmasked x -> y [B, N, D]."""
    _, fs = encoder(tp, embed(sp, x))
    return rc.mean_instance_norm(rc.top_k(fs, CFG))              # target_final_norm none


def d2v_loss(pred, y, mask):
    return rc.regression_loss(CFG, pred, y, mask)


# ---------------------------------------------------------------------------
# Training and the fixture.

def train(init, x, mask, noises):
    def step(k, sp, tp, leaves):
        with torch.no_grad():
            y = teacher_targets(tp, sp, x)
        pred, _ = student_forward(leaves, x, mask, noises[k])
        return d2v_loss(pred, y, mask), {"y": y, "pred": pred.detach()}
    return rc.train(CFG, init, step, in_teacher=in_teacher, is_shared=is_shared)


def build():
    rng = np.random.RandomState(SEED)
    init = init_params(rng)
    x_np, mask_np, noise_np = make_inputs(rng)
    x, mask, noises = rc.input_tensors(x_np, mask_np, noise_np, np.int64)
    rec = train(init, x, mask, noises)
    buf, t = rc.fixture(CFG, init, rec, rc.input_arrays(x_np, mask_np, noise_np),
                        in_teacher=in_teacher)
    return buf, t, (init, x, mask, noises, rec)


# ---------------------------------------------------------------------------
# Self-checks.

def check_twins(init, x):
    # Attention: torch's own multi-head attention with the same [q;k;v] layout,
    # and head by head.
    rc.check_attention(init, CFG, 5)

    # GELU (erf), channel LayerNorm, instance norm: explicit formulas.
    z = torch.randn(4, 6, 9, generator=torch.Generator().manual_seed(2))
    rc.check_gelu(z)
    rc.check_channel_ln(z, "decoder LayerNorm over channels equals the formula")
    rc.check_instance_norm(N, D, "positions")

    # Embedding: explicit per-token lookup, position row n + 2, LayerNorm formula.
    rc.check_text_embed(init, x, CFG)

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
        cur = rc.gelu_ref((y - mu) / torch.sqrt(var + 1e-5))    # no residual (config)
    hid = rc.gelu_ref(cur.transpose(1, 2) @ init["decoder.proj.0.weight"].t()
                      + init["decoder.proj.0.bias"])
    out = hid @ init["decoder.proj.1.weight"].t() + init["decoder.proj.1.bias"]
    check(close(decoder(init, zin), out, 1e-12, 1e-12),
          "decoder equals explicit conv1d (pad k//2) + LN + GELU, Linear-GELU-Linear")


def check_inputs(x_np, mask_np, noise_np):
    check(x_np.dtype == np.int32 and x_np.shape == (B, N)
          and int(x_np.min()) >= 0 and int(x_np.max()) < V_TOK and not (x_np == PAD).any(),
          "input.x i32 [B, N] in [0, vocab), no <pad> id")
    check(any(len(np.unique(r)) < N for r in x_np), "some token id repeats within a sample")
    rc.check_mask_rows(mask_np, B * M, N, NMASK_ROW)
    rc.check_noise(noise_np, STEPS)


def check_loss_terms(init, x, mask, noise, rec):
    y = teacher_targets(init, init, x)
    pred, _ = student_forward(init, x, mask, noise)
    rc.check_loss_by_hand(rec, y, pred, mask, M, 1.0, NMASK_ROW)  # loss_scale 1
    # Targets by hand: the top-2 FFN outputs of blocks 1, 2, normalised over positions.
    _, fs = encoder(init, embed(init, x))
    acc = rc.dim1_norm_ref(fs[-2]) + rc.dim1_norm_ref(fs[-1])
    check(close(acc / 2, rec["y"], 1e-12, 1e-12), "y = mean of IN(f) of blocks 1 and 2")
    rc.check_noise_slots(lambda nz: student_forward(init, x, mask, nz)[0], pred, mask, noise)
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

    def loss_of(p):
        return d2v_loss(student_forward(p, x, mask, noise)[0], y, mask)
    names = ["embed_norm.weight", "embed_norm.bias", "blocks.0.attn.qkv.bias",
             "blocks.2.norm1.weight", "blocks.1.mlp.fc2.bias", "decoder.layers.0.conv.bias",
             "decoder.layers.1.conv.bias", "decoder.proj.0.bias", "decoder.proj.1.bias"]
    check(rc.gradcheck_loss(init, names, loss_of),
          "torch.autograd.gradcheck of the loss on %d parameters" % len(names))

    # Central differences on single entries of every weight matrix (embedding
    # tables included): two with a non-zero gradient, one anywhere.
    worst, count = rc.central_diff(init, rec["grad"], loss_of, rc.nonzero_and_random_entries)
    check(worst < 1e-5, "central differences match autograd on %d entries of every weight "
          "matrix (worst relative error %.2e)" % (count, worst))
    # Unused rows get no gradient: embedding rows of absent ids, position rows 0, 1, >= N+2.
    rc.check_embed_grads(rec["grad"], x, CFG, "the ids present")


def main():
    buf, tensors, (init, x, mask, noises, rec) = build()

    check_inputs(tensors["input.x"], tensors["input.mask"],
                 [tensors["input.noise.%d" % k] for k in range(STEPS)])
    check(rec["teacher_equal_at_0"], "teacher equals student at step 0")
    check_twins(init, x)
    check_loss_terms(init, x, mask, noises[0], rec)
    check_grads(init, x, mask, noises[0], rec)

    rc.check_schedules(rec)
    rc.check_clipped(rec)
    rc.check_moved(rec, init)
    rc.check_shared_teacher(rec, init, in_teacher, is_shared, "every non-decoder parameter",
                            "embed_*", "teacher parameters")

    rc.check_file(CFG, buf, tensors, build, 2 * 1024 * 1024, "2 MB")
    rc.summary(rec)
    rc.finish("v2_text.py", OUT, buf, tensors)


if __name__ == "__main__":
    main()
