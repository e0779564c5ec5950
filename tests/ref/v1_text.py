#!/usr/bin/python3
"""PyTorch reference for the tiny data2vec (v1) text model (tests/ref/README.md).

Written from ../../../shared/DATA2VEC.md and tests/ref/README.md only, never from
d2v's C code. The RoBERTa based v1 text model: the embedding of v2_text (shared
by student and teacher), BERT-style input with most masked tokens replaced by
<mask> and one per row by a random id, post-LN blocks, the two-layer
regression head, FFN-output targets LayerNormed per token and averaged,
Smooth-L1 summed over channels at the <mask> positions, the cosine lr.
Everything is computed in float64 and stored as float32 in
v1_text_tiny.safetensors next to this script:

  student.<name>           initial weights (the teacher starts equal)
  input.x                  i32 [B, N] original token ids (the teacher's input)
  input.x_masked           i32 [B, N] the student's input (<mask> = 49, one random id per row)
  input.mask               u8 [B, N] = (x_masked == 49): the loss positions (4, 6)
  expect.y, expect.pred, expect.loss                        step 0
  expect.grad.<name>       step-0 gradients, before clipping
  expect.grad_norm, expect.lr, expect.tau, expect.losses    [STEPS]
  expect.student.<name>    after STEPS updates, every parameter
  expect.teacher.<name>    after STEPS updates, every parameter but
                           regression_head.* (embed_* are shared: equal to the
                           student's)

What the references share (checks, safetensors, schedules, the Adam and EMA
training loop, the AltBlock, the text embedding, twins) is in refcommon.py next
to this script.

Run with /usr/bin/python3 (Debian's python3-torch). The script checks itself
(gradcheck and central differences of the loss gradient, the inputs, teacher
== student at step 0, the loss with both Smooth-L1 branches, the targets and
the student recomputed by hand, the random replacement out of the loss,
independent twins of attention, blocks, embedding and norms, the schedules,
determinism, a read-back of the file) and exits non-zero when a check fails.
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
    ("modality", "text"), ("objective", "v1"),
    ("vocab", 50), ("max_positions", 16),
    ("dim", 32), ("heads", 2), ("mlp_dim", 128),
    ("prenet_depth", 0), ("depth", 3), ("top_k", 2),
    ("norm_eps", 1e-5),
    ("clone", 1),
    ("loss_scale", 1), ("loss_beta", 0.5),
    ("target_layer_norm", "ln"), ("target_final_norm", "none"),
    ("embed_dropout", 0), ("encoder_dropout", 0), ("attention_dropout", 0),
    ("activation_dropout", 0), ("post_mlp_drop", 0), ("input_dropout", 0),
    ("context_dropout", 0), ("layerdrop", 0), ("drop_path", 0),
    ("lr_schedule", "cosine"), ("lr", 1e-3), ("min_lr", 0), ("warmup", 2), ("max_update", 5),
    ("beta1", 0.9), ("beta2", 0.98), ("eps", 1e-6), ("weight_decay", 0.01),
    ("clip_norm", 1.0),
    ("ema_decay", 0.9), ("ema_end_decay", 0.99), ("ema_anneal_end_step", 4),
])

B = 2                                   # samples per batch (one masking each)
N = 12                                  # tokens per sample (README)
V_TOK = CFG["vocab"]
PAD = 1                                 # fairseq <pad>; never in the inputs
MASK_ID = V_TOK - 1                     # <mask> = 49, the last id (masked_lm appends it)
D = CFG["dim"]
BETA = float(CFG["loss_beta"])
SCALE = float(CFG["loss_scale"])
NMASK = [4, 6]                          # <mask> tokens of sample 0, 1 (README)
NRAND = 1                               # random replacements per sample (README)
STEPS = CFG["max_update"]
SEED = 20240625

SHARED = ("embed_tokens.", "embed_positions.", "embed_norm.")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "v1_text_tiny.safetensors")


# ---------------------------------------------------------------------------
# Parameters: names, shapes, layouts of the README; values drawn once.

def param_shapes():
    s = collections.OrderedDict()
    rc.text_embed_shapes(s, CFG)
    rc.altblock_shapes(s, CFG["prenet_depth"] + CFG["depth"], D, CFG["mlp_dim"])
    s["regression_head.0.weight"] = (2 * D, D)
    s["regression_head.0.bias"] = (2 * D,)
    s["regression_head.2.weight"] = (D, 2 * D)
    s["regression_head.2.bias"] = (D,)
    return s


def is_shared(name):
    return name.startswith(SHARED)


def in_teacher(name):
    return not name.startswith("regression_head.")


def init_params(rng):
    """As v2_text: refcommon's rule (weights N(0, 1/fan_in), biases N(0, 0.02),
    LayerNorm weight 1 + N(0, 0.1), bias N(0, 0.05)); both embedding tables
    N(0, 1) (every row random; position rows 0 and 1 are never used)."""
    return rc.init_params(param_shapes(), rng, rc.embed_tables_normal)


decayed = rc.decayed


# ---------------------------------------------------------------------------
# Inputs.

def make_inputs(rng):
    """x: ids drawn uniformly from [0, vocab) without <pad> (1) and <mask> (49).
    Per sample b, NMASK[b] + 1 distinct uniformly random positions: the first
    NMASK[b] become <mask>, the last a random id (never 1, 49 or the original
    id). mask = (x_masked == <mask>)."""
    ids = np.array([i for i in range(V_TOK) if i not in (PAD, MASK_ID)])
    x = ids[rng.randint(0, len(ids), size=(B, N))].astype(np.int32)     # [B, N]
    xm = x.copy()
    for b, k in enumerate(NMASK):
        pos = rng.permutation(N)[:k + NRAND]
        xm[b, pos[:k]] = MASK_ID
        for n in pos[k:]:
            other = np.array([i for i in ids if i != x[b, n]])
            xm[b, n] = other[rng.randint(len(other))]
    mask = (xm == MASK_ID).astype(np.uint8)                      # [B, N]
    return x, xm, mask


# ---------------------------------------------------------------------------
# Model.

def embed(p, x):
    """ids [B, N] -> LN(embed_tokens[x] + embed_positions[n + 2]) [B, N, D],
    v2_text's (refcommon); shared by student (on x_masked) and teacher (on x)."""
    return rc.text_embed(p, x, CFG)


def encoder(p, tokens):
    """tokens [R, N, D] -> (h [R, N, D], FFN outputs of every block). No
    context LayerNorm (prenet_depth 0), no CLS."""
    return rc.altblocks(p, tokens, CFG)


def regression_head(p, h):
    """Linear(D -> 2D) -> GELU (erf) -> Linear(2D -> D) at every position."""
    z = F.gelu(F.linear(h, p["regression_head.0.weight"], p["regression_head.0.bias"]))
    return F.linear(z, p["regression_head.2.weight"], p["regression_head.2.bias"])


def student_forward(p, xm):
    """The student on x_masked -> pred [B, N, D]."""
    h, _ = encoder(p, embed(p, xm))
    return regression_head(p, h)


def teacher_targets(tp, sp, x):
    """Teacher blocks tp on the STUDENT's embedding sp of the original x ->
    y [B, N, D]: LN (no affine, eps 1e-5) of f of the top_k blocks, averaged."""
    _, fs = encoder(tp, embed(sp, x))
    normed = [F.layer_norm(f, (D,), eps=1e-5) for f in rc.top_k(fs, CFG)]
    return sum(normed) / len(normed)                             # target_final_norm none


def smooth_l1(e):
    return F.smooth_l1_loss(e, torch.zeros_like(e), reduction="none", beta=BETA)


def d2v_loss(pred, y, mask):
    """sum over (b, n) with mask 1 of sum_d loss_scale * l(pred - y), / N_mask."""
    mb = mask.bool()
    return SCALE * smooth_l1(pred[mb] - y[mb]).sum() / int(mb.sum())


# ---------------------------------------------------------------------------
# Training and the fixture.

def train(init, x, xm, mask):
    def step(k, sp, tp, leaves):
        with torch.no_grad():
            y = teacher_targets(tp, sp, x)
        pred = student_forward(leaves, xm)
        return d2v_loss(pred, y, mask), {"y": y, "pred": pred.detach()}

    def after(k, rec, keep, grads, sp, tp):
        err = (keep["pred"] - keep["y"])[mask.bool()]
        rec.setdefault("kink_margin", []).append(float((err.abs() - BETA).abs().min()))
        rec.setdefault("branches", []).append((int((err.abs() < BETA).sum()),
                                               int((err.abs() >= BETA).sum())))
    return rc.train(CFG, init, step, decayed, in_teacher, is_shared, after)


def build():
    rng = np.random.RandomState(SEED)
    init = init_params(rng)
    x_np, xm_np, mask_np = make_inputs(rng)
    x, mask, _ = rc.input_tensors(x_np, mask_np, (), np.int64)
    xm = torch.from_numpy(xm_np.astype(np.int64))
    rec = train(init, x, xm, mask)
    inputs = rc.input_arrays(x_np, mask_np)
    inputs["input.x_masked"] = xm_np
    buf, t = rc.fixture(CFG, init, rec, inputs, in_teacher=in_teacher)
    return buf, t, (init, x, xm, mask, rec)


# ---------------------------------------------------------------------------
# Self-checks.

def blocks_ref(p, x):
    """One sample x [1, N] by the formulas: embedding and blocks -> (h, [f of every block])."""
    return rc.altblocks_ref(p, rc.text_embed_ref(p, x, CFG)[0], CFG)


def check_twins(init, x):
    rc.check_attention(init, CFG, 5)
    rc.check_altblocks(init, CFG, N)
    z = torch.randn(4, 6, D, generator=torch.Generator().manual_seed(2))
    rc.check_gelu(z)
    rc.check_layer_norm(z)
    rc.check_text_embed(init, x, CFG)
    e = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    ref = torch.where(e.abs() < BETA, 0.5 * e * e / BETA, e.abs() - 0.5 * BETA)
    check(close(smooth_l1(e), ref, 1e-15, 1e-15), "Smooth-L1 equals 0.5 e^2/beta for |e| < beta, "
          "else |e| - beta/2")


def check_inputs(x_np, xm_np, mask_np):
    check(x_np.dtype == np.int32 and x_np.shape == (B, N) and int(x_np.min()) >= 0
          and int(x_np.max()) < V_TOK and not np.isin(x_np, [PAD, MASK_ID]).any(),
          "input.x i32 [B, N] in [0, vocab), no <pad>, no <mask>")
    check(xm_np.dtype == np.int32 and xm_np.shape == (B, N) and not (xm_np == PAD).any(),
          "input.x_masked i32 [B, N], no <pad>")
    check(mask_np.dtype == np.uint8 and np.array_equal(mask_np, (xm_np == MASK_ID).astype(np.uint8)),
          "input.mask u8 = (x_masked == <mask>)")
    check(list(mask_np.sum(1)) == NMASK, "<mask> per sample %s (want %s)"
          % (list(mask_np.sum(1)), NMASK))
    rnd = (xm_np != x_np) & (xm_np != MASK_ID)
    check(list(rnd.sum(1)) == [NRAND] * B,
          "exactly one random replacement per sample (a real id, not the original)")
    check(bool(((xm_np == x_np) | (mask_np == 1) | rnd).all()), "x_masked equals x elsewhere")
    check(any(len(np.unique(r)) < N for r in x_np), "some token id repeats within a sample")


def check_forward(init, x, xm, mask, rec):
    y = teacher_targets(init, init, x)
    pred = student_forward(init, xm)
    rc.check_recomputed(rec, y, pred)
    check(tuple(pred.shape) == (B, N, D) and tuple(y.shape) == (B, N, D), "pred, y [B, N, D]")

    # Loss by hand: l(e) = 0.5 e^2 / beta for |e| < beta, else |e| - 0.5 beta,
    # summed over channels at the <mask> positions, times loss_scale, / N_mask.
    tot, cnt, quad, lin = 0.0, 0, 0, 0
    for b in range(B):
        for n in range(N):
            if int(xm[b, n]) != MASK_ID:
                continue
            cnt += 1
            for d in range(D):
                e = float(pred[b, n, d]) - float(y[b, n, d])
                if abs(e) < BETA:
                    tot += SCALE * 0.5 * e * e / BETA
                    quad += 1
                else:
                    tot += SCALE * (abs(e) - 0.5 * BETA)
                    lin += 1
    loss0 = float(rec["loss"])
    check(cnt == sum(NMASK), "N_mask = %d = 4 + 6 (the <mask> positions only)" % cnt)
    check(abs(tot / cnt - loss0) < 1e-12 * max(1.0, abs(loss0)),
          "step-0 loss %.12f recomputed by hand (%.12f)" % (loss0, tot / cnt))
    check(quad > 0 and lin > 0, "both Smooth-L1 branches are used at step 0 (%d quadratic, "
          "%d linear)" % (quad, lin))
    check(all(q > 0 and li > 0 for q, li in rec["branches"]),
          "both branches at every step %s" % rec["branches"])
    check(min(rec["kink_margin"]) > 1e-4,
          "no | |e| - beta | below 1e-4 at any step (min %.3g)" % min(rec["kink_margin"]))

    # Targets and the student by the formulas, one sample at a time.
    ys, ps = [], []
    for b in range(B):
        _, fs = blocks_ref(init, x[b:b + 1])
        ys.append((ln_ref(fs[1]) + ln_ref(fs[2])) / 2)
        h, _ = blocks_ref(init, xm[b:b + 1])
        hid = gelu_ref(h @ init["regression_head.0.weight"].t() + init["regression_head.0.bias"])
        ps.append(hid @ init["regression_head.2.weight"].t() + init["regression_head.2.bias"])
    check(close(torch.stack(ys), y, 1e-12, 1e-12),
          "y = mean of LN(f) of blocks 1 and 2 on the original x, per sample")
    check(close(torch.stack(ps), pred, 1e-12, 1e-12),
          "pred = Linear(GELU(Linear(blocks(embed(x_masked)))))")

    # The random replacement: in the student's input, out of the loss.
    rb, rn = [int(v[0]) for v in np.nonzero((xm != x).numpy() & (xm != MASK_ID).numpy())]
    p2 = pred.clone()
    p2[rb, rn] += 10.0
    check(float(d2v_loss(p2, y, mask)) == float(d2v_loss(pred, y, mask)),
          "the random-replacement position gets no loss (its prediction does not enter it)")
    pr = pred.detach().clone().requires_grad_(True)
    gp = torch.autograd.grad(d2v_loss(pr, y, mask), pr)[0]
    check(bool((gp[rb, rn] == 0).all()) and bool((gp.abs().sum(-1) > 0).eq(mask.bool()).all()),
          "the loss gradient w.r.t. pred is non-zero exactly at the <mask> positions")
    xm2 = xm.clone()
    xm2[rb, rn] = x[rb, rn]
    check(not close(student_forward(init, xm2)[rb][mask[rb].bool()], pred[rb][mask[rb].bool()],
                    1e-6, 1e-6),
          "the random id is the student's input: undoing it changes the <mask> predictions")
    # The teacher sees the original x: its id at a <mask> position reaches y.
    n = int(torch.nonzero(mask[0])[0])
    x2 = x.clone()
    x2[0, n] = 2 if int(x[0, n]) != 2 else 3
    check(not close(teacher_targets(init, init, x2), y, 1e-6, 1e-6),
          "the original id at a <mask> position reaches the teacher (the student sees <mask>)")
    # The <mask> positions of a sample get different predictions (positions).
    check(rc.masked_preds_differ(pred, mask),
          "the <mask> positions of every sample get pairwise different predictions")


def check_grads(init, x, xm, mask, rec):
    y = teacher_targets(init, init, x).detach()

    def loss_of(p):
        return d2v_loss(student_forward(p, xm), y, mask)
    names = ["embed_norm.weight", "embed_norm.bias", "blocks.0.attn.qkv.bias",
             "blocks.2.norm1.weight", "blocks.1.mlp.fc2.bias", "blocks.2.norm2.bias",
             "regression_head.0.bias", "regression_head.2.bias", "regression_head.2.weight"]
    check(rc.gradcheck_loss(init, names, loss_of),
          "torch.autograd.gradcheck of the loss on %d parameters (%d entries)"
          % (len(names), sum(init[n].numel() for n in names)))

    # Central differences on single entries of every weight matrix (embedding
    # tables included): two with a non-zero gradient, one anywhere.
    worst, count = rc.central_diff(init, rec["grad"], loss_of, rc.nonzero_and_random_entries)
    check(worst < 1e-5, "central differences match autograd on %d entries of every weight "
          "matrix (worst relative error %.2e)" % (count, worst))
    rc.check_embed_grads(rec["grad"], xm, CFG, "the ids of x_masked (<mask> included)")
    rc.check_grads_nonzero(rec, init)


def main():
    buf, tensors, (init, x, xm, mask, rec) = build()

    check_inputs(tensors["input.x"], tensors["input.x_masked"], tensors["input.mask"])
    check(rec["teacher_equal_at_0"], "teacher equals student at step 0")
    check_twins(init, x)
    check_forward(init, x, xm, mask, rec)
    check_grads(init, x, xm, mask, rec)

    rc.check_schedules(rec)
    rc.check_clipped(rec)
    rc.check_moved(rec, init)
    rc.check_shared_teacher(rec, init, in_teacher, is_shared,
                            "every parameter but regression_head.*", "embed_*", "blocks.*")
    check(rec["losses"][0] == float(rec["loss"]), "losses[0] is the step-0 loss")

    back = rc.check_file(CFG, buf, tensors, build, 1536 * 1024, "1.5 MiB")
    rc.check_tensor_names(back, init, ["input.x", "input.x_masked", "input.mask"],
                          in_teacher=in_teacher)
    rc.summary(rec)
    rc.finish("v1_text.py", OUT, buf, tensors)


if __name__ == "__main__":
    main()
