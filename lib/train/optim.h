/*
 * optim.h - the update rule of fairseq's data2vec recipes (DATA2VEC.md §§5, 9).
 *
 *     lr  = d2v_lr(cfg, k);                  // k updates done before this one
 *     nrm = d2v_clip_grads(ops, grads, n, cfg->clip_norm);
 *     d2v_adam_step(ops, &lay, cfg, params, grads, m, v, lr, k + 1);
 *     d2v_ema_step(ops, teacher, params, lay.teacher_end, d2v_tau(cfg, k + 1));
 *
 * The arithmetic runs on the backend ops (their sumsq, scale, adamw and
 * ema), so the buffers are the backend's.
 */
#ifndef D2V_OPTIM_H
#define D2V_OPTIM_H

#include <stddef.h>

#include "backend/ops.h"
#include "model/config.h"
#include "model/params.h"

/* Cosine schedule with linear warmup from min_lr (fairseq "cosine"), or
 * fairseq's "tri_stage" (warmup, hold, exponential decay) by
 * cfg->lr_schedule. */
double d2v_lr(const d2v_config *cfg, long k);
/* EMA decay after t updates: linear from ema_decay to ema_end_decay over
 * ema_anneal_end_step updates, then constant. */
double d2v_tau(const d2v_config *cfg, long t);
/* Global L2 norm of g (n); when max > 0 and the norm exceeds it, scales g
 * by max / (norm + 1e-6).  Returns the norm before clipping. */
double d2v_clip_grads(const d2v_ops *o, float *g, size_t n, double max);
/* fairseq Adam with decoupled weight decay on the parameters whose table
 * entry says so; t is the 1-based step count for bias correction. */
void d2v_adam_step(const d2v_ops *o, const d2v_layout *l,
    const d2v_config *cfg, float *p, const float *g, float *m, float *v,
    double lr, long t);
/* teacher = tau * teacher + (1 - tau) * student over n floats; nothing when
 * tau >= 1 (a frozen teacher). */
void d2v_ema_step(const d2v_ops *o, float *teacher, const float *student,
    size_t n, double tau);



#include "model/model.h"

/* The update that follows d2v_model_step for update k (k done before it):
 * clip m->grads, Adam with lr(k), then the EMA with tau(k+1).  Returns the
 * gradient norm before clipping; lr and tau (may be NULL) get the values
 * used. */
double d2v_train_update(d2v_model *m, long k, double *lr, double *tau);
#endif
