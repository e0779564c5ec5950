#!/usr/bin/python3
"""PyTorch reference for the tiny data2vec (v1) speech model (tests/ref/README.md).

Written from ../../../shared/DATA2VEC.md and tests/ref/README.md only, never from
d2v's C code. The wav2vec 2.0 based v1 speech model: the feature encoder of
v2_audio, masked frames REPLACED by the learned mask_emb (the whole sequence
is kept), the conv-pos encoder shared by student and teacher, post-LN blocks
without ALiBi, final_proj, FFN-output targets instance-normalised and
averaged, L2 loss with 1/sqrt(D), the tri-stage lr. Everything is computed in
float64 and stored as float32 in v1_audio_tiny.safetensors next to this
script:

  student.<name>           initial weights (the teacher starts equal)
  input.x, input.mask      f32 [B, S] waveform (normalised), u8 [B, N] (1 = masked; 7, 9)
  expect.feat              f32 [B, N, D], feature encoder + feature_norm + feature_proj
  expect.y, expect.pred, expect.loss                        step 0
  expect.grad.<name>       step-0 gradients, before clipping
  expect.grad_norm, expect.lr, expect.tau, expect.losses    [STEPS]
  expect.student.<name>    after STEPS updates, every parameter
  expect.teacher.<name>    after STEPS updates, every parameter but mask_emb and
                           final_proj.* (feature_* and pos_conv.* are shared:
                           equal to the student's)

What the references share (checks, safetensors, schedules, the Adam and EMA
training loop, the AltBlock, the feature encoder and conv-pos of the speech
models, twins) is in refcommon.py next to this script.

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(gradcheck and central differences of the loss gradient, mask counts and
spans, teacher == student at step 0, the loss, the targets and the student
recomputed by hand, independent twins of the feature encoder, conv-pos,
attention, blocks and norms, the tri-stage lr through its stages,
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
from refcommon import check, close, ln_ref  # noqa: E402

# ---------------------------------------------------------------------------
# Configuration (README table; stored verbatim as __metadata__["config"]).

CFG = collections.OrderedDict([
    ("modality", "audio"), ("objective", "v1"),
    ("conv_dim", 16),
    ("dim", 48), ("heads", 3), ("mlp_dim", 96),
    ("prenet_depth", 0), ("depth", 3), ("top_k", 2),
    ("norm_eps", 1e-5),
    ("pos_conv_depth", 2), ("pos_conv_kernel", 5), ("pos_conv_groups", 4),
    ("alibi", False),
    ("clone", 1),
    ("loss_scale", 0), ("loss_beta", 0),
    ("target_layer_norm", "in"), ("target_final_norm", "none"),
    ("embed_dropout", 0), ("encoder_dropout", 0), ("attention_dropout", 0),
    ("activation_dropout", 0), ("post_mlp_drop", 0), ("input_dropout", 0),
    ("context_dropout", 0), ("layerdrop", 0), ("drop_path", 0),
    ("lr_schedule", "tri_stage"), ("lr", 1e-3), ("warmup", 1), ("hold", 2), ("max_update", 5),
    ("init_lr_scale", 0.01), ("final_lr_scale", 0.05),
    ("min_lr", 0),
    ("beta1", 0.9), ("beta2", 0.98), ("eps", 1e-6), ("weight_decay", 0.01),
    ("clip_norm", 1.0),
    ("ema_decay", 0.9), ("ema_end_decay", 0.99), ("ema_anneal_end_step", 4),
])

B = 2                                   # utterances per batch (one mask each)
S = 6400                                # samples per utterance (README)
N = rc.conv_len(S)                      # 19 frames
D = CFG["dim"]
NB = CFG["prenet_depth"] + CFG["depth"]
NMASK = [7, 9]                          # masked frames of utterance 0, 1 (README)
SPAN = 3                                # span length of the fixture's masks
STEPS = CFG["max_update"]
SEED = 20240621

SHARED = ("feature_extractor.", "feature_norm.", "feature_proj.", "pos_conv.")
STUDENT_ONLY = ("mask_emb", "final_proj.")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "v1_audio_tiny.safetensors")


# ---------------------------------------------------------------------------
# Parameters: names, shapes, layouts of the README; values drawn once.

def param_shapes():
    s = collections.OrderedDict()
    rc.feature_encoder_shapes(s, CFG)
    rc.pos_conv_shapes(s, CFG)
    s["context_norm.weight"] = (D,)
    s["context_norm.bias"] = (D,)
    rc.altblock_shapes(s, NB, D, CFG["mlp_dim"])
    s["mask_emb"] = (D,)
    s["final_proj.weight"] = (D, D)
    s["final_proj.bias"] = (D,)
    return s


def is_shared(name):
    return name.startswith(SHARED)


def in_teacher(name):
    return not name.startswith(STUDENT_ONLY)


def init_params(rng):
    """refcommon's rule (weights N(0, 1/fan_in), biases N(0, 0.02), LayerNorm
    weight 1 + N(0, 0.1), bias N(0, 0.05)), as v2_audio; mask_emb U[0, 1) as
    fairseq, made from its N(0, 1) draw z as Phi(z) (the normal CDF), so every
    parameter takes one draw from the stream."""
    return rc.init_params(param_shapes(), rng, lambda name, z: 0.5 * (1.0 + np.vectorize(
        math.erf)(z / math.sqrt(2.0))) if name == "mask_emb" else None)


decayed = rc.decayed


# ---------------------------------------------------------------------------
# Inputs.

def span_mask_row(rng, count):
    """compute_mask_indices-like (DATA2VEC.md §4.2) with spans of SPAN frames:
    2 to 4 distinct starts in [0, N - SPAN), each marks SPAN frames; drawn
    again until exactly count frames are masked in at least two runs."""
    while True:
        row = np.zeros(N, dtype=np.uint8)
        for st in rng.choice(N - SPAN, rng.randint(2, 5), replace=False):
            row[st:st + SPAN] = 1
        if int(row.sum()) == count and len(rc.runs(row)) >= 2:
            return row


def make_inputs(rng):
    t = np.arange(S) / 16000.0
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + 0.7)
    w0 = (np.sin(2 * np.pi * 220 * t) * env + 0.5 * np.sin(2 * np.pi * 530 * t + 1.1)
          + 0.3 * rng.standard_normal(S))
    w1 = (np.sin(2 * np.pi * (90 * t + 2000 * t * t)) + 0.5 * np.sign(np.sin(2 * np.pi * 7 * t))
          * np.sin(2 * np.pi * 300 * t) + 0.3 * rng.standard_normal(S))
    w1[S // 2:] *= 0.4                                           # a quieter end
    x = rc.normalised_waves([w0, w1])                            # [B, S]
    mask = np.stack([span_mask_row(rng, c) for c in NMASK])      # [B, N]
    return x, mask


# ---------------------------------------------------------------------------
# Model.

def feature_encoder(p, x):
    """waveform [B, S] -> feat [B, N, D], v2_audio's (refcommon: 7 x (Conv1d, no
    bias -> LN(C) -> GELU), feature_norm, feature_proj). Shared with the teacher."""
    return rc.feature_encoder(p, x, CFG)


def pos_encode(p, z):
    """z [R, N, D] -> z + pos(z), v2_audio's conv-pos (refcommon), here on the
    whole sequence and shared with the teacher."""
    return rc.pos_encode(p, z, CFG)


def encoder(p, z):
    """z [R, N, D] -> (h [R, N, D], FFN outputs of every block): z + pos(z),
    context_norm (eps norm_eps), every block (post-LN, no ALiBi, no CLS)."""
    h = F.layer_norm(pos_encode(p, z), (D,), p["context_norm.weight"], p["context_norm.bias"],
                     CFG["norm_eps"])
    return rc.altblocks(p, h, CFG)


def student_from_feat(p, feat, mask):
    """feat [B, N, D] -> pred [B, N, D]: masked frames replaced by mask_emb,
    the encoder on the whole sequence, final_proj at every frame."""
    z = torch.where(mask.bool().unsqueeze(-1), p["mask_emb"].expand_as(feat), feat)
    h, _ = encoder(p, z)
    return F.linear(h, p["final_proj.weight"], p["final_proj.bias"])


def student_forward(p, wave, mask):
    return student_from_feat(p, feature_encoder(p, wave), mask)


def teacher_from_feat(tp, feat):
    """The teacher's conv-pos (shared: equal to the student's), context_norm and
    blocks on the unmasked feat -> y [B, N, D]: IN of f of the top_k blocks, averaged."""
    _, fs = encoder(tp, feat)
    return rc.mean_instance_norm(rc.top_k(fs, CFG))              # target_final_norm none


def teacher_targets(tp, sp, wave):
    """The teacher consumes the STUDENT's feature encoder output."""
    return teacher_from_feat(tp, feature_encoder(sp, wave))


def d2v_loss(pred, y, mask):
    """sum over masked (b, n) of sum_d (pred - y)^2 / sqrt(D), / N_mask."""
    return rc.regression_loss(CFG, pred, y, mask)


# ---------------------------------------------------------------------------
# Training and the fixture.

def train(init, x, mask):
    def step(k, sp, tp, leaves):
        with torch.no_grad():
            y = teacher_targets(tp, sp, x)
        pred = student_forward(leaves, x, mask)
        keep = {"y": y, "pred": pred.detach()}
        if k == 0:
            with torch.no_grad():
                keep["feat"] = feature_encoder(sp, x)
        return d2v_loss(pred, y, mask), keep
    return rc.train(CFG, init, step, decayed, in_teacher, is_shared)


def build():
    rng = np.random.RandomState(SEED)
    init = init_params(rng)
    x_np, mask_np = make_inputs(rng)
    x, mask, _ = rc.input_tensors(x_np, mask_np, (), np.float64)
    rec = train(init, x, mask)
    buf, t = rc.fixture(CFG, init, rec, rc.input_arrays(x_np, mask_np), extra=("feat",),
                        in_teacher=in_teacher)
    return buf, t, (init, x, mask, rec)


# ---------------------------------------------------------------------------
# Self-checks.

def encoder_ref(p, z):
    """One sequence z [N, D] by the formulas -> (h, [f of every block])."""
    h = ln_ref(rc.pos_encode_ref(p, z.unsqueeze(0), CFG)[0], p["context_norm.weight"],
               p["context_norm.bias"], CFG["norm_eps"])
    return rc.altblocks_ref(p, h, CFG)


def check_twins(init, x):
    rc.check_frame_counts(S, N, 19)
    rc.check_feature_encoder(init, x, CFG, N)
    rc.check_pos_encode(init, CFG, N)
    rc.check_attention(init, CFG, 7)
    rc.check_altblocks(init, CFG, N)

    zz = torch.randn(4, 6, 9, generator=torch.Generator().manual_seed(2))
    rc.check_gelu(zz)
    rc.check_channel_ln(zz, "LayerNorm over channels equals the formula")
    rc.check_instance_norm(N, D, "frames")


def check_inputs(x_np, mask_np):
    rc.check_wave_input(x_np, B, S)
    check(mask_np.dtype == np.uint8 and mask_np.shape == (B, N)
          and set(np.unique(mask_np)) <= {0, 1}, "input.mask u8 [B, N], values 0/1")
    check(list(mask_np.sum(1)) == NMASK, "masked per utterance %s (want %s)"
          % (list(mask_np.sum(1)), NMASK))
    rl = [rc.runs(r) for r in mask_np]
    check(all(len(r) >= 2 and max(r) >= SPAN for r in rl),
          "masks are spans, at least two per utterance (runs %s)" % rl)


def check_init(init):
    me = init["mask_emb"]
    check(bool((me >= 0).all() and (me < 1).all()) and 0.35 < float(me.mean()) < 0.65,
          "mask_emb in [0, 1) (mean %.3f)" % float(me.mean()))
    dec = sorted(n for n, t in init.items() if decayed(n, t))
    want = sorted(["feature_extractor.conv_layers.%d.conv.weight" % i
                   for i in range(len(rc.FEATURE_CONV))]
                  + ["feature_proj.weight", "final_proj.weight"]
                  + ["pos_conv.%d.weight" % j for j in range(CFG["pos_conv_depth"])]
                  + ["blocks.%d.%s.weight" % (i, s) for i in range(NB)
                     for s in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")])
    check(dec == want, "weight decay on %d tensors: the conv, projection and block matrices "
          "(not mask_emb, norms, biases)" % len(dec))


def check_forward(init, x, mask, rec):
    feat = feature_encoder(init, x)
    check(close(feat, rec["feat"], 0, 0), "expect.feat recomputed")
    y = teacher_from_feat(init, feat)
    pred = student_from_feat(init, feat, mask)
    rc.check_recomputed(rec, y, pred)
    check(tuple(pred.shape) == (B, N, D) and tuple(y.shape) == (B, N, D), "pred, y [B, N, D]")

    reg, n_mask = rc.loss_by_hand(pred, y, mask, 1, 1.0 / math.sqrt(D))
    loss0 = float(rec["loss"])
    check(n_mask == sum(NMASK), "N_mask = %d = 7 + 9" % n_mask)
    check(abs(reg / n_mask - loss0) < 1e-12 * max(1.0, abs(loss0)),
          "step-0 loss %.12f recomputed term by term (%.12f)" % (loss0, reg / n_mask))

    # Targets and the student by the formulas, one utterance at a time.
    ys, ps = [], []
    for b in range(B):
        _, fs = encoder_ref(init, feat[b])
        ys.append((rc.dim1_norm_ref(fs[1].unsqueeze(0)) + rc.dim1_norm_ref(fs[2].unsqueeze(0)))[0] / 2)
        z = feat[b].clone()
        for n in range(N):
            if mask[b, n]:
                z[n] = init["mask_emb"]
        h, _ = encoder_ref(init, z)
        ps.append(h @ init["final_proj.weight"].t() + init["final_proj.bias"])
    check(close(torch.stack(ys), y, 1e-12, 1e-12),
          "y = mean of IN over frames of f of blocks 1 and 2, per utterance")
    check(close(torch.stack(ps), pred, 1e-12, 1e-12),
          "pred = final_proj(blocks(context_norm(z + pos(z)))), z = feat with mask_emb at masked frames")

    # A masked frame's features do not reach the student, but do reach the teacher.
    b, n = 1, int(torch.nonzero(mask[1])[0])
    f2 = feat.clone()
    f2[b, n] += 1.0
    check(close(student_from_feat(init, f2, mask), pred, 0, 0),
          "the features of a masked frame do not reach the student")
    check(not close(teacher_from_feat(init, f2), y, 1e-6, 1e-6), "... but do reach the teacher")
    # mask_emb is the vector put in (not zero as v2): a zero vector changes pred.
    z0 = dict(init)
    z0["mask_emb"] = torch.zeros(D)
    check(not close(student_from_feat(z0, feat, mask), pred, 1e-6, 1e-6),
          "mask_emb (not zero) replaces the masked frames")
    # The masked frames of an utterance get different predictions (conv-pos and
    # the attention give them position and context).
    check(rc.masked_preds_differ(pred, mask),
          "the masked frames of every utterance get pairwise different predictions")
    # Only masked frames count: pred at an unmasked frame does not enter the loss.
    p2 = pred.clone()
    p2[0, int(torch.nonzero(mask[0] == 0)[0])] += 1.0
    check(float(d2v_loss(p2, y, mask)) == float(d2v_loss(pred, y, mask)),
          "an unmasked frame's prediction does not enter the loss")


def check_grads(init, x, mask, rec):
    y = teacher_targets(init, init, x).detach()

    def loss_of(p):
        return d2v_loss(student_forward(p, x, mask), y, mask)
    names = ["mask_emb", "final_proj.bias", "feature_extractor.conv_layers.0.conv.weight",
             "feature_extractor.conv_layers.4.norm.weight", "feature_norm.bias",
             "feature_proj.bias", "pos_conv.0.bias", "pos_conv.1.bias", "context_norm.weight",
             "blocks.0.attn.qkv.bias", "blocks.1.norm1.bias", "blocks.2.norm2.weight"]
    check(rc.gradcheck_loss(init, names, loss_of),
          "torch.autograd.gradcheck of the loss on %d parameters (%d entries; mask_emb and "
          "feature_extractor.conv_layers.0.conv.weight included)"
          % (len(names), sum(init[n].numel() for n in names)))
    rc.check_grads_nonzero(rec, init)
    worst, count = rc.central_diff(init, rec["grad"], loss_of, rc.random_entries(3))
    check(worst < 1e-5, "central differences match autograd on %d entries of every weight "
          "tensor (worst relative error %.2e)" % (count, worst))


def check_tri_stage(rec):
    lr = CFG["lr"]
    want = [0.01 * lr, lr, lr, lr, lr * math.sqrt(0.05)]
    stages = [rc.tri_stage_stage(CFG, k)[0] for k in range(STEPS)]
    check(all(abs(a - b) < 1e-18 for a, b in zip(rec["lr"], want)),
          "tri-stage lr %s = [0.01 lr, lr, lr, lr, lr sqrt(0.05)]" % rec["lr"])
    check(stages == [0, 1, 1, 2, 2], "the five updates go through warmup, hold and decay "
          "(stages %s)" % stages)
    after = [rc.lr_at(CFG, k) for k in range(STEPS, STEPS + 3)]
    check(abs(after[0] - 0.05 * lr) < 1e-18 and after[1] == after[2] == 0.05 * lr
          and rc.tri_stage_stage(CFG, STEPS + 1)[0] == 3,
          "the decay ends at final_lr_scale lr at k = max_update, the final stage after (%s)" % after)
    tau_ref = [0.9225, 0.945, 0.9675, 0.99, 0.99]
    check(all(abs(a - b) < 1e-15 for a, b in zip(rec["tau"], tau_ref)), "tau schedule %s" % rec["tau"])


def main():
    buf, tensors, (init, x, mask, rec) = build()

    check_inputs(tensors["input.x"], tensors["input.mask"])
    check_init(init)
    check(rec["teacher_equal_at_0"], "teacher equals student at step 0")
    check_twins(init, x)
    check_forward(init, x, mask, rec)
    check_grads(init, x, mask, rec)

    check_tri_stage(rec)
    rc.check_clipped(rec)
    rc.check_moved(rec, init)
    rc.check_shared_teacher(rec, init, in_teacher, is_shared,
                            "every parameter but mask_emb and final_proj.*",
                            "feature_* and pos_conv.*", "context_norm.* and blocks.*")
    check(rec["losses"][0] == float(rec["loss"]), "losses[0] is the step-0 loss")

    back = rc.check_file(CFG, buf, tensors, build, 1536 * 1024, "1.5 MiB")
    rc.check_tensor_names(back, init, ["input.x", "input.mask"], ["feat"], in_teacher)
    rc.summary(rec)
    rc.finish("v1_audio.py", OUT, buf, tensors)


if __name__ == "__main__":
    main()
