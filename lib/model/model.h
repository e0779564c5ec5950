/*
 * model.h - the data2vec 2.0 image model on one backend (DATA2VEC.md §14).
 *
 * Dimension letters: B images, M masked copies, R = B*M student rows,
 * N tokens per image, V visible tokens per row, T sequence length (V+1 for
 * the student, N+1 for the teacher: the CLS token first), D width, F MLP
 * width, Dd decoder width, K top blocks.
 *
 *     d2v_model m;
 *     d2v_model_init(&m, &cfg, d2v_backend_cpu(), &err);
 *     d2v_params_init(&m.lay, &cfg, m.params, seed);
 *     d2v_model_sync_teacher(&m);                  // teacher := student
 *     d2v_model_step(&m, img, mask, noise, B, &out, &err);   // loss, m.grads
 *
 * The step runs the teacher on the unmasked images (targets y), the student
 * on the visible tokens of every copy, the decoder, the loss, and the
 * backward pass, leaving the gradient of the loss in m.grads.
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
} d2v_enc_acts;

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
	float *sincos;     /* (N,D) fixed 2-D positions */
	/* per-step state, (re)allocated for B images and V visible tokens */
	int B, V;
	float *pix;        /* (B, N, C*P*P) normalised patches */
	float *tok;        /* (B,N,D) patch embedding + positions (student) */
	float *dtok;       /* (B,N,D) */
	int *keep;         /* (R,V) kept token indices, ascending */
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
void d2v_model_free(d2v_model *m);
/* teacher := student (every teacher parameter). */
void d2v_model_sync_teacher(d2v_model *m);

/*
 * One training step's forward and backward.  img (B,C,H,W) u8; mask
 * (B*M,N) u8 with the same count of ones in every row; noise (B*M,N,D) or
 * NULL to draw N(0, mask_noise_std^2) from rng_seed; y (B,N,D) and ycls
 * (B,D) given targets, or NULL to run the EMA teacher.  Zeroes m->grads and
 * fills it with the gradient of the loss.
 */
int d2v_model_step(d2v_model *m, const uint8_t *img, const uint8_t *mask,
    const float *noise, const float *y, const float *ycls, int B,
    uint64_t rng_seed, d2v_step_out *out, d2v_err *err);

/* Teacher targets only: y (B,N,D) and ycls (B,D) from the given parameter
 * buffer (m->teacher normally). */
int d2v_model_targets(d2v_model *m, const float *params, const uint8_t *img,
    int B, float *y, float *ycls, d2v_err *err);

/* Encoder features of block `layer` (0-based over all blocks; -1 for the
 * last) for B unmasked images: out (B,N+1,D), CLS first. */
int d2v_model_features(d2v_model *m, const float *params, const uint8_t *img,
    int B, int layer, float *out, d2v_err *err);

#endif
