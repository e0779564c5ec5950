/*
 * model.h - the data2vec 2.0 and data2vec (v1) models of images, audio and
 * text on one backend (DATA2VEC.md §14 and §§2-8).
 *
 * Dimension letters: B samples, M masked copies, R = B*M student rows,
 * N tokens per sample (patches, frames or text tokens), V visible tokens
 * per row, E extra tokens (1, the CLS, for images; 0 otherwise), T sequence
 * length (V+E for the student, N+E for the teacher), D width, F MLP width,
 * Dd decoder width, K top blocks, S audio samples, C feature-encoder
 * channels, Lc conv layers.
 *
 * Inputs x: images u8 (B,C,H,W); audio f32 (B,S) normalised samples; text
 * i32 (B,N) token ids.  Audio and text lengths vary: d2v_model_set_length
 * sets the length of the samples that the next calls get.
 *
 *     d2v_model m;
 *     d2v_model_init(&m, &cfg, d2v_backend_cpu(), &err);
 *     d2v_params_init(&m.lay, &cfg, m.params, seed);
 *     d2v_model_sync_teacher(&m);                  // teacher := student
 *     d2v_model_step(&m, img, mask, noise, B, &out, &err);   // loss, m.grads
 *
 * The step runs the teacher on the unmasked images (targets y), the student
 * on the visible tokens of every copy, the decoder, the loss, and the
 * backward pass, leaving the gradient of the loss in m.grads.  With the
 * v1 objective (one copy) the student runs on the whole sequence with the
 * masked positions replaced by a learned vector, and a head replaces the
 * decoder; a v1 text student reads x_masked (d2v_model_set_student_ids).
 */
#ifndef D2V_MODEL_H
#define D2V_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend/ops.h"
#include "config.h"
#include "err.h"
#include "params.h"

/* Activations of one encoder pass of R sequences of T tokens. */
typedef struct d2v_enc_acts {
	int R, T;
	float *x_in;      /* (R,T,D) tokens before the context LayerNorm */
	float *ctx_mean, *ctx_rstd; /* (R*T) */
	float *x0;        /* (R,T,D) input of block 0 */
	/* per block l, arrays of nb pointers */
	float **qkv;      /* (R,T,3D) */
	float **probs;    /* (R,H,T,T) */
	float **att;      /* (R,T,D) attention output before proj */
	float **x1;       /* (R,T,D) x + attn */
	float **m1, **s1; /* (R*T) LN1 mean, rstd */
	float **r;        /* (R,T,D) LN1 output */
	float **h1;       /* (R,T,F) fc1 output */
	float **g;        /* (R,T,F) gelu(h1) */
	float **f;        /* (R,T,D) fc2 output: the FFN output, the targets */
	float **x2;       /* (R,T,D) r + f */
	float **m2, **s2; /* (R*T) LN2 mean, rstd */
	float **out;      /* (R,T,D) block output */
	/* dropout scales (0 or 1/(1-p)), allocated for the student only when
	 * the config has dropout; used when `drop` is set for a pass */
	int drop;
	float **drop_att; /* (R,H,T,T) attention dropout */
	float **drop_ao;  /* (R,T,D) encoder dropout x drop path, attention branch */
	float **drop_act; /* (R,T,F) activation dropout after the GELU */
	float **drop_f;   /* (R,T,D) activation dropout x post-MLP dropout x drop path */
	float *drop_ctx;  /* (R,T,D) dropout after the context LayerNorm */
	float **pa;       /* v1: (R,T,D) attention projection output; then
	                   * x1 = x + gamma_1 pa, r = LN1(x), x2 = LN2(x1),
	                   * out = x1 + gamma_2 f */
	int *skip;        /* (nb) layerdrop: block l skipped this pass */
	int *pos;         /* (R,T) token positions for ALiBi */
	float *slope;     /* (H) ALiBi slopes of this pass: m_h max(scale_h, 0) */
} d2v_enc_acts;

/* The audio position encoder's activations over R sequences of N frames. */
typedef struct d2v_pos_acts {
	float *z;         /* (R,N,D) input (masked frames zeroed) */
	float **c, **m, **s, **l, **g; /* depth x: conv out (R,N,D), LN mean,
	                  * rstd (R*N), LN out (R,N,D), GELU out (R,N,D) */
} d2v_pos_acts;

typedef struct d2v_step_out {
	double loss;       /* the whole loss */
	double loss_reg;   /* regression part */
	double loss_cls;   /* CLS part */
	double target_var; /* mean over dims of the std of y over tokens */
	double pred_var;   /* same for the predictions at masked positions */
	long n_masked;     /* masked (row, token) pairs */
} d2v_step_out;

typedef struct d2v_model {
	d2v_config cfg;
	d2v_layout lay;
	const d2v_ops *ops;
	int N, D, F, H, nb;
	float *params, *grads, *m, *v, *teacher; /* lay.total floats each */
	int unverified;    /* loaded from a checkpoint without a data digest
	                    * (written by another tool): the caller warns */
	float *sincos;     /* (N,D) fixed 2-D positions (images) */
	float *alibi0;     /* (H) ALiBi base slopes (audio) */
	int E;             /* extra tokens: 1 (CLS) for images, else 0 */
	int len;           /* audio samples S or text tokens N per sample */
	/* per-step state, (re)allocated for B samples, V visible tokens and
	 * the length */
	int B, V, alen;
	float *pix;        /* (B, N, C*P*P) normalised patches */
	float *tok;        /* (B,N,D) local encoder output (student) */
	float *dtok;       /* (B,N,D) */
	/* audio feature encoder: per conv layer i, T_i+1 frames */
	int ct[D2V_CONV_LAYERS + 1]; /* lengths: ct[0] = S, ct[Lc] = N */
	float *cv[D2V_CONV_LAYERS], *cm[D2V_CONV_LAYERS], *cs[D2V_CONV_LAYERS];
	float *cl[D2V_CONV_LAYERS], *cg[D2V_CONV_LAYERS];
	                   /* (B,T_i+1,C) conv out, (B*T_i+1) LN mean, rstd,
	                    * (B,T_i+1,C) LN out, GELU out */
	float *wav;        /* (B,S) the audio samples, in the backend's memory */
	float *fm, *fs, *fl; /* (B*N), (B*N), (B,N,C) feature LayerNorm */
	d2v_pos_acts spos, tpos; /* student (R rows), teacher (B rows) */
	float *gslope;     /* (H) ALiBi slope gradient */
	/* text embedding */
	float *esum;       /* (B,N,D) token + position embedding */
	float *em, *es;    /* (B*N) embedding LayerNorm mean, rstd */
	float *eln;        /* (B,N,D) embedding LayerNorm output */
	float *drop_emb;   /* (B,N,D) embedding dropout */
	float *drop_in;    /* (R,V,D) decoder input dropout */
	float *ph, *pg;    /* (R,N,2Dd) two-layer projection: hidden, GELU */
	float *hn, *hm, *hs; /* v1: (B,N+1,D) final LayerNorm out, (B*(N+1))
	                    * mean, rstd */
	/* One step as a part of a larger batch (gradient accumulation, data
	 * parallel ranks): row0 is the global index of this part's first
	 * student row (B*M rows per part: its dropout and decoder noise are
	 * those rows' of the whole batch), loss_count the masked count of the
	 * whole batch, the regression loss's divisor (0: this part's own).
	 * The parts' losses and gradients then add up to the whole's. */
	long row0, loss_count;
	int *keep;         /* (R,V) kept token indices, ascending */
	uint8_t *mask;     /* (R,N) the step's mask, in the backend's memory */
	int *every;        /* (B,N) 0 .. N-1 in each row: whole-row gathers */
	int32_t *ids;      /* (B,N) text: the ids of the pass, likewise */
	const int32_t *xm; /* v1 text: the student's ids (B,N), or NULL */
	d2v_enc_acts st;   /* student, R x (V+1) */
	d2v_enc_acts te;   /* teacher, B x (N+1) */
	float *y;          /* (B,N,D) targets */
	float *ycls;       /* (B,D) */
	float *dec_in;     /* (R,N,D) */
	float **dc;        /* decoder_layers x (R,N,Dd) conv output */
	float **dm, **ds;  /* decoder_layers x (R*N) LN mean, rstd */
	float **dl;        /* decoder_layers x (R,N,Dd) LN output */
	float **dout;      /* decoder_layers x (R,N,Dd) layer output */
	float *pred;       /* (R,N,D) */
	float *col, *dcol; /* conv scratch */
	/* backward scratch */
	float *gA, *gB, *gC;  /* (R,T,D) or (R,N,max(D,Dd)) */
	float *gF, *gF2;      /* (R,T,F) */
	float *gQKV;          /* (R,T,3D) */
	float *gdec, *gdec2;  /* (R,N,max(D,Dd)) */
} d2v_model;

int d2v_model_init(d2v_model *m, const d2v_config *cfg, const d2v_ops *ops,
    d2v_err *err);
/* Audio: len samples per sample; text: len tokens.  D2V_EINVAL (with a
 * message) for audio shorter than the feature encoder's receptive field or
 * text longer than the position table.  Images: ignored. */
int d2v_model_set_length(d2v_model *m, int len, d2v_err *err);
/* Tokens per sample at the current length (m->N). */
int d2v_model_tokens(const d2v_model *m);
void d2v_model_free(d2v_model *m);
/* teacher := student (every teacher parameter). */
void d2v_model_sync_teacher(d2v_model *m);

/*
 * One training step's forward and backward.  x as above; mask (B*M,N) u8
 * with the same count of ones in every row; noise (B*M,N,D) or NULL to draw
 * N(0, mask_noise_std^2) from rng_seed; y (B,N,D) and ycls (B,D, images
 * only) given targets, or NULL to run the EMA teacher.  Zeroes m->grads
 * and fills it with the gradient of the loss.
 */
int d2v_model_step(d2v_model *m, const void *x, const uint8_t *mask,
    const float *noise, const float *y, const float *ycls, int B,
    uint64_t rng_seed, d2v_step_out *out, d2v_err *err);

/* v1 text: the student's input ids xm (B,N), x_masked, for the steps that
 * follow (the teacher reads x); the caller's mask marks the loss
 * positions, where xm is <mask>.  NULL: the student reads x. */
void d2v_model_set_student_ids(d2v_model *m, const int32_t *xm);

/* Teacher targets only: y (B,N,D) and ycls (B,D; images) from the given
 * parameter buffer (m->teacher normally).  Audio and text take their shared
 * local encoder from m->params, as the teacher does in training. */
int d2v_model_targets(d2v_model *m, const float *params, const void *x,
    int B, float *y, float *ycls, d2v_err *err);

/* Encoder features of block `layer` (0-based over all blocks; -1 for the
 * last) for B unmasked samples: out (B,N+E,D), the CLS first for images. */
int d2v_model_features(d2v_model *m, const float *params, const void *x,
    int B, int layer, float *out, d2v_err *err);

/* 0, or D2V_EIO with the message of the backend's first failure (a GPU
 * error; the CPU backend cannot fail).  d2v_model_step, _targets and
 * _features check it before they return; d2v_train_update's caller
 * checks it after the update. */
int d2v_model_check(const d2v_model *m, d2v_err *err);

#endif
