/*
 * ops.h - the operation table: what the model code asks a backend to do.
 *
 * The model (lib/model/) is written once against this table; each backend
 * (cpu.c now, cuda.c later) fills it.  Dimension letters: M rows, K inputs,
 * N outputs, R sequences, T tokens, D width, H heads, C channels.  Every
 * buffer argument carries its shape.  Backward functions ACCUMULATE (+=)
 * into gradient buffers, as in llm.c; a NULL gradient pointer is skipped.
 */
#ifndef D2V_OPS_H
#define D2V_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct d2v_ops {
	const char *name;

	/* Memory for every buffer the ops take: bytes, zeroed, NULL when
	 * exhausted.  The CPU's is the heap; the GPU's is managed memory,
	 * which the model's own loops read and write between ops (every GPU
	 * op has finished when it returns).  release(NULL) does nothing. */
	void *(*alloc)(size_t bytes);
	void (*release)(void *p);
	/* Host memory that copy reads fastest (page-locked on the GPU;
	 * malloc's on the CPU), for the inputs of a step; NULL when
	 * exhausted.  host_release(NULL) does nothing. */
	void *(*host_alloc)(size_t bytes);
	void (*host_release)(void *p);
	/* NULL (the CPU's, which cannot fail), or a function giving NULL
	 * while every op has worked and otherwise the message of the first
	 * failure (a CUDA, cuBLAS or cuDNN error); after one, the ops do
	 * nothing.  The ops themselves return nothing: the model asks this
	 * after each step (d2v_model_check). */
	const char *(*failed)(void);

	/* dst (bytes) = src; p (bytes) = 0.  Either pointer of copy may be
	 * the backend's memory or the host's (the caller's input and output
	 * pass through it). */
	void (*copy)(void *dst, const void *src, size_t bytes);
	void (*zero)(void *p, size_t bytes);

	/* out (M,N) = in (M,K) . w (N,K)^T + b (N) (b may be NULL) */
	void (*matmul_forward)(float *out, const float *in, const float *w,
	    const float *b, int M, int K, int N);
	/* din (M,K) += dout . w; dw (N,K) += dout^T . in; db (N) += sum dout */
	void (*matmul_backward)(float *din, float *dw, float *db,
	    const float *dout, const float *in, const float *w, int M, int K,
	    int N);

	/* LayerNorm over the last dim C of rows (rows,C); w and b NULL for no
	 * affine; saves mean and rstd (rows) for backward. */
	void (*layernorm_forward)(float *out, float *mean, float *rstd,
	    const float *in, const float *w, const float *b, int rows, int C,
	    float eps);
	void (*layernorm_backward)(float *din, float *dw, float *db,
	    const float *dout, const float *in, const float *mean,
	    const float *rstd, const float *w, int rows, int C);

	/* exact (erf) GELU over n elements */
	void (*gelu_forward)(float *out, const float *in, size_t n);
	void (*gelu_backward)(float *din, const float *in, const float *dout,
	    size_t n);

	/* Multi-head self-attention core: qkv (R,T,3D) laid out as
	 * (3, H, D/H) per token -> out (R,T,D); probs (R,H,T,T) saved before
	 * dropout; drop (R,H,T,T) scales the probabilities (attention dropout:
	 * 0 or 1/(1-p)), NULL for none.  ALiBi when slope is set: the logit
	 * of (i, j) in head h gets -slope[h] * |pos[r,i] - pos[r,j]| added
	 * after the 1/sqrt(D/H) scaling; slope (H), pos (R,T) original token
	 * positions.  The backward adds to dslope (H, may be NULL) the
	 * gradient of the loss with respect to slope. */
	void (*attention_forward)(float *out, float *probs, const float *qkv,
	    const float *drop, const float *slope, const int *pos, int R,
	    int T, int D, int H);
	void (*attention_backward)(float *dqkv, float *dslope,
	    const float *dout, const float *qkv, const float *probs,
	    const float *drop, const int *pos, int R, int T, int D, int H);

	/* Grouped 2-D convolution, 'same' padding k/2, stride 1, channels-last:
	 * in (R, Hh*Ww, Ci), w (Co, Ci/G, k, k), b (Co) -> out (R, Hh*Ww, Co).
	 * col is scratch of d2v_conv_scratch(R, Hh, Ww, Ci, Co, k, k, G)
	 * floats. */
	void (*conv2d_forward)(float *out, float *col, const float *in,
	    const float *w, const float *b, int R, int Hh, int Ww, int Ci,
	    int Co, int k, int G);
	/* dcol: scratch of the same size as col. */
	void (*conv2d_backward)(float *din, float *dw, float *db, float *col,
	    float *dcol, const float *dout, const float *in, const float *w,
	    int R, int Hh, int Ww, int Ci, int Co, int k, int G);

	/* Grouped 1-D convolution, channels-last, stride s, zero padding pad
	 * on each side: in (R, Ti, Ci), w (Co, Ci/G, k), b (Co) or NULL ->
	 * out (R, To, Co) with To = (Ti + 2 pad - k) / s + 1.  col is scratch
	 * of (R*To, (Ci/G)*k) floats, dcol the same size; for stride 1 and
	 * 'same' padding (pad = k/2, k odd), d2v_conv_scratch(R, 1, Ti, Ci,
	 * Co, 1, k, G) floats. */
	void (*conv1d_forward)(float *out, float *col, const float *in,
	    const float *w, const float *b, int R, int Ti, int Ci, int Co,
	    int k, int s, int pad, int G);
	void (*conv1d_backward)(float *din, float *dw, float *db, float *col,
	    float *dcol, const float *dout, const float *in, const float *w,
	    int R, int Ti, int Ci, int Co, int k, int s, int pad, int G);

	/* a (n) += b (n) */
	void (*add)(float *a, const float *b, size_t n);
	/* a (n) *= b (n) */
	void (*mul)(float *a, const float *b, size_t n);
	/* Instance norm over T per channel for each of R sequences, no affine,
	 * biased variance: out (R,T,C) from in (R,T,C); out may be in.
	 * When acc is set, ADDS scale * normalised into out instead. */
	void (*instancenorm_forward)(float *out, const float *in, int R, int T,
	    int C, float eps, int acc, float scale);

	/* The student's visible tokens.  gather: out (R, E+V, D), row r =
	 * [first (D) when E is 1,] then the rows idx[r, 0..V) of sequence
	 * r / M of src (R/M, N, D); idx (R,V) ascending in [0, N).
	 * scatter, its backward: dsrc (R/M, N, D) += each row's tokens of
	 * din (R, E+V, D) at idx, the copies of a sequence added in order;
	 * dfirst (D, may be NULL) += the rows' first tokens (E = 1). */
	void (*gather_tokens)(float *out, const float *src, const int *idx,
	    const float *first, int R, int M, int N, int V, int E, int D);
	void (*scatter_tokens)(float *dsrc, float *dfirst, const float *din,
	    const int *idx, int R, int M, int N, int V, int E, int D);

	/* a (B, n) += b (n), the same b added to each of the B rows */
	void (*add_bcast)(float *a, const float *b, int B, size_t n);

	/* Rows of a table by index (token embeddings).  gather_rows: row i
	 * of out (n,D) = row ids[i] of table (rows, D); scatter_rows, its
	 * backward: row ids[i] of dtable += row i of din (n,D), for i in
	 * order (ids repeat). */
	void (*gather_rows)(float *out, const float *table, const int32_t *ids,
	    int n, int D);
	void (*scatter_rows)(float *dtable, const float *din,
	    const int32_t *ids,
	    int n, int D);

	/* The decoder's input.  place: row idx[r, j] of out (R,N,D) = row
	 * E+j of in (R, E+V, D) times row j of scale (R,V,D) (NULL for 1),
	 * j < V; out's other rows untouched.  pick, its backward: row E+j of
	 * dout (R, E+V, D) += row idx[r, j] of din (R,N,D) times scale. */
	void (*place_tokens)(float *out, const float *in, const int *idx,
	    const float *scale, int R, int N, int V, int E, int D);
	void (*pick_tokens)(float *dout, const float *din, const int *idx,
	    const float *scale, int R, int N, int V, int E, int D);

	/* Masked positions.  mask_tokens: row (r, n) of out (R,N,D) = fill
	 * (D, NULL for zeros) where mask (R,N) is set, else row (r/M, n) of
	 * src (R/M, N, D).  unmask_tokens, its backward: dsrc (R/M, N, D) +=
	 * the unmasked rows of din (R,N,D), the M copies of a sequence added
	 * in order; dfill (D, may be NULL) += the masked rows, in row order. */
	void (*mask_tokens)(float *out, const float *src, const uint8_t *mask,
	    const float *fill, int R, int M, int N, int D);
	void (*unmask_tokens)(float *dsrc, float *dfill, const float *din,
	    const uint8_t *mask, int R, int M, int N, int D);

	/* Random numbers, drawn as lib/rng.h draws them, so that every
	 * backend gives the same (d2v_rng_seed(seed, a, b), xoshiro256**).
	 * noise_fill: each row (r, n) of out (R,N,D) where mask (R,N) is set
	 * = std times normals from the generator keyed (seed, 0xdec0,
	 * (row0 + r) N + n), d2v_rng_normal2's pair for dims d, d+1 (d even;
	 * the sine dropped for an odd last d); other rows untouched.
	 * drop_fill: buf (rows, per) = 0 or keep s per element, keep =
	 * (float)(1/(1-p)); s the row's drop path: 0 when dp > 0 and the first
	 * uniform of the generator keyed (seed, kind, first + r) is below dp,
	 * else (float)(1/(1-dp)) (1 when dp is 0); element i is 0 when p > 0
	 * and uniform number i mod 4096 of the generator keyed (seed, kind +
	 * ((i/4096 + 1) << 40), first + r) is below p.  kind < 2^40. */
	void (*noise_fill)(float *out, const uint8_t *mask, int R, int N, int D,
	    float std, uint64_t seed, uint64_t row0);
	void (*drop_fill)(float *buf, int rows, size_t per, double p, double dp,
	    uint64_t seed, uint64_t kind, uint64_t first);

	/* LayerScale (data2vec images): out (rows,D) += g (D) times x
	 * (rows,D), times s (rows,D) too when s is set (dropout, drop path):
	 * out += g[d] (x s), the products rounded in that order.  Its
	 * backward: dg (D) += the sum over rows of dy (x s) in double, rounded
	 * once; dx (rows,D) = (dy g) s (set, not added). */
	void (*layerscale_forward)(float *out, const float *g, const float *x,
	    const float *s, int rows, int D);
	void (*layerscale_backward)(float *dx, float *dg, const float *dy,
	    const float *g, const float *x, const float *s, int rows, int D);

	/* The losses and the statistics of the predictions and targets.
	 * masked_loss: dp (R,T,D) = 0 but at the predicted rows: for every
	 * (r, n) where mask (R,N) is set (NULL: all), e = row off+n of
	 * sequence r of pred (R,T,D) minus row n of sequence r/M of y
	 * (R/M, N, D); returns the sum of w l(e) over those rows and dims in
	 * double, l(e) = e^2 for beta 0, else Smooth-L1 (0.5 e^2 / beta
	 * within beta, |e| - beta/2 beyond), and sets dp = (float)(w l'(e) /
	 * norm) there.
	 * masked_std: the mean over the D dims of the sample standard
	 * deviation (n-1) of the same rows of x (R,T,D) (0 for fewer than 2).
	 * mean_tokens: out (B,D) = the mean of in (B,N,D) over N, in double. */
	double (*masked_loss)(float *dp, const float *pred, const float *y,
	    const uint8_t *mask, int R, int M, int N, int T, int off, int D,
	    double w, double beta, double norm);
	double (*masked_std)(const float *x, const uint8_t *mask, int R, int N,
	    int T, int off, int D);
	void (*mean_tokens)(float *out, const float *in, int B, int N, int D);

	/* The optimiser (lib/train/optim.c) over flat parameter buffers. */
	/* sum of x (n) squared, in double */
	double (*sumsq)(const float *x, size_t n);
	/* x (n) *= c */
	void (*scale)(float *x, size_t n, float c);
	/* one AdamW step over n parameters: m = b1 m + (1-b1) g,
	 * v = b2 v + (1-b2) g^2, p -= decay p, p -= step m / (sqrt(v) + eps);
	 * step holds the learning rate and both bias corrections */
	void (*adamw)(float *p, const float *g, float *m, float *v, size_t n,
	    double b1, double b2, double step, double eps, float decay);
	/* t (n) = tau t + (1 - tau) s */
	void (*ema)(float *t, const float *s, size_t n, double tau);
} d2v_ops;

/* The CPU backend: OpenBLAS sgemm (outside OpenMP regions) and OpenMP
 * element-wise loops. */
const d2v_ops *d2v_backend_cpu(void);

/* The CPU table with its linear layers (matmul_forward and
 * matmul_backward) in bf16: both operands of each of their products
 * rounded to bf16 (nearest even), the products summed in fp32, the bias
 * and its gradient fp32; every other operation, the master weights, the
 * optimiser and the EMA stay fp32.  Through oneDNN's bf16 matmul where
 * this CPU has one (AVX-512 BF16 or AMX) and it agrees with the emulation
 * on a test product, otherwise emulated: the rounded operands go through
 * fp32 sgemm, the same numbers and no faster.  why (may be NULL) gets a
 * static line that says which; D2V_BF16_EMULATE in the environment forces
 * the emulation. */
const d2v_ops *d2v_backend_cpu_bf16(const char **why);
/* 1 when the bf16 table runs on oneDNN, 0 when it is emulated */
int d2v_bf16_onednn(void);
/* out (n) = in (n) rounded to bf16 and back (nearest even, NaN quiet);
 * out may be in */
void d2v_bf16_round(float *out, const float *in, size_t n);

/* The CUDA backend (lib/backend/cuda.cu): cuBLAS GEMMs, cuDNN
 * convolutions and the kernels of kernels/ on the first GPU, every buffer
 * in managed memory.  bf16 rounds the GEMMs' operands to bf16 (fp32
 * sums), as the CPU's bf16 table does; everything else is fp32.  NULL,
 * with err saying why, when this build has no CUDA backend or no GPU can
 * be used (never a silent fall back to the CPU). */
const d2v_ops *d2v_backend_cuda(int bf16, d2v_err *err);
/* 1 when this build has the CUDA backend (it may still find no GPU) */
int d2v_cuda_built(void);

/* Scratch floats (col, and dcol alike) of a stride-1 'same' convolution
 * of R inputs of Hh x Ww, kernel kh x kw, for either CPU path. */
size_t d2v_conv_scratch(int R, int Hh, int Ww, int Ci, int Co, int kh,
    int kw, int G);
/* Scratch floats (col, and dcol alike) of a 1-D convolution as the
 * conv1d ops take it, for any CPU path. */
size_t d2v_conv1d_scratch(int R, int Ti, int Ci, int Co, int k, int st,
    int pad, int G);
/* The CPU backend's kernels: 0 (default) the fast ones, 1 their plain
 * twins (im2col and GEMM for every convolution, libm's erff and expf in
 * GELU, the loop attention, column walks for the bias and LayerNorm
 * gradients), for tests and benchmarks; D2V_CPU_PLAIN=1 in the
 * environment sets it when the backend is first asked for. */
extern int d2v_cpu_plain;
/* 1: the fast convolutions by d2v's own kernels (direct, taps) rather
 * than oneDNN's (conv_dnnl.h), for tests and benchmarks; D2V_CONV=own in
 * the environment sets it when the backend is first asked for. */
extern int d2v_cpu_conv_own;

#endif
