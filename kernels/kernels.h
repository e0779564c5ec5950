/*
 * kernels.h - d2v's hand-written CUDA kernels, one operation per file in
 * kernels/, each file also a lab (its CPU reference, a validation and a
 * benchmark: make -C kernels NAME).  lib/backend/cuda.cu calls these host
 * launchers; cuBLAS and cuDNN do the GEMMs and the convolutions.
 *
 * Every pointer is device (or managed) memory; every launcher queues its
 * kernels on stream st and returns without synchronising.  Backward
 * launchers ACCUMULATE (+=) into gradient buffers, as the CPU backend
 * does; a NULL gradient pointer is skipped.  Reductions are deterministic
 * (fixed partial sums in scratch, then a fixed-order sum), never atomics,
 * so a step gives the same numbers every run.  Dimension letters as in
 * lib/backend/ops.h.
 */
#ifndef D2V_KERNELS_H
#define D2V_KERNELS_H

#include <stddef.h>
#include <cuda_runtime.h>
#include <cuda_bf16.h>

#ifdef __cplusplus
extern "C" {
#endif

/* layernorm.cu: LayerNorm over the last dim C of rows (rows,C); w and b
 * (C) NULL for no affine; mean and rstd (rows) saved.  The backward adds
 * to din (rows,C), dw and db (C); scratch holds
 * d2v_k_layernorm_scratch(rows, C) floats. */
void d2v_k_layernorm_forward(float *out, float *mean, float *rstd,
    const float *in, const float *w, const float *b, int rows, int C,
    float eps, cudaStream_t st);
size_t d2v_k_layernorm_scratch(int rows, int C);
void d2v_k_layernorm_backward(float *din, float *dw, float *db,
    const float *dout, const float *in, const float *mean, const float *rstd,
    const float *w, int rows, int C, float *scratch, cudaStream_t st);

/* gelu.cu: exact (erf) GELU; out (n) = gelu(in); din (n) += dout gelu'(in) */
void d2v_k_gelu_forward(float *out, const float *in, size_t n,
    cudaStream_t st);
void d2v_k_gelu_backward(float *din, const float *in, const float *dout,
    size_t n, cudaStream_t st);

/* softmax.cu: the attention softmax.  s (R,H,T,T) holds q.k (unscaled)
 * and becomes, in place, the probabilities of logits
 *     scale * s[r,h,i,j] - slope[h] * |pos[r,i] - pos[r,j]|
 * (the ALiBi term only when slope is not NULL; slope (H), pos (R,T)).
 * The backward turns dp (R,H,T,T), the gradient of the probabilities, in
 * place into the gradient of q.k: scale * p (dp - sum_j p dp); when dslope
 * is set it ADDS to dslope (H) the gradient of the slopes,
 *     sum over r,i,j of -|pos[r,i]-pos[r,j]| * p (dp - sum_j p dp),
 * through scratch of d2v_k_softmax_scratch(R, H, T) floats. */
void d2v_k_softmax_forward(float *s, const float *slope, const int *pos,
    int R, int H, int T, float scale, cudaStream_t st);
size_t d2v_k_softmax_scratch(int R, int H, int T);
void d2v_k_softmax_backward(float *dp, float *dslope, const float *p,
    const float *slope, const int *pos, int R, int H, int T, float scale,
    float *scratch, cudaStream_t st);

/* elementwise.cu */
/* a (n) += b (n) */
void d2v_k_add(float *a, const float *b, size_t n, cudaStream_t st);
/* a (n) *= b (n) */
void d2v_k_mul(float *a, const float *b, size_t n, cudaStream_t st);
/* out (n) = a (n) * b (n); out may not alias */
void d2v_k_mul_to(float *out, const float *a, const float *b, size_t n,
    cudaStream_t st);
/* x (n) *= c */
void d2v_k_scale(float *x, size_t n, float c, cudaStream_t st);
/* out (M,N) += b (N) broadcast over rows */
void d2v_k_bias_add(float *out, const float *b, int M, int N,
    cudaStream_t st);
/* db (N) += sum over rows of dout (M,N); scratch holds
 * d2v_k_bias_grad_scratch(M, N) floats */
size_t d2v_k_bias_grad_scratch(int M, int N);
void d2v_k_bias_grad(float *db, const float *dout, int M, int N,
    float *scratch, cudaStream_t st);
/* a (B,n) += b (n), the same b for each of the B rows */
void d2v_k_add_bcast(float *a, const float *b, int B, size_t n,
    cudaStream_t st);
/* out (n) = in (n) rounded to bf16, nearest even (NaN stays NaN) */
void d2v_k_to_bf16(__nv_bfloat16 *out, const float *in, size_t n,
    cudaStream_t st);

/* instancenorm.cu: per sequence r and channel c, over T, biased variance,
 * no affine: y = (x - mean) / sqrt(var + eps); in (R,T,C); out (R,T,C)
 * = y, or out += scale * y when acc; out may be in (when acc is 0). */
void d2v_k_instancenorm_forward(float *out, const float *in, int R, int T,
    int C, float eps, int acc, float scale, cudaStream_t st);

/* tokens.cu: the student's visible tokens.  gather: out (R, E+V, D), row
 * r = [first (D) when E is 1,] then rows idx[r, 0..V) of sequence r / M of
 * src (R/M, N, D); idx (R,V) ascending in [0, N).  scatter: dsrc (R/M, N,
 * D) += each row's tokens of din (R, E+V, D) at idx, the M copies of a
 * sequence added in order; dfirst (D, or NULL) += the rows' first tokens
 * in row order (E = 1). */
void d2v_k_gather_tokens(float *out, const float *src, const int *idx,
    const float *first, int R, int M, int N, int V, int E, int D,
    cudaStream_t st);
void d2v_k_scatter_tokens(float *dsrc, float *dfirst, const float *din,
    const int *idx, int R, int M, int N, int V, int E, int D,
    cudaStream_t st);

/* tokens.cu, continued: the decoder's input and the masked positions.
 * place: row idx[r,j] of out (R,N,D) = row E+j of in (R,E+V,D) times row
 * j of scale (R,V,D) (NULL: copied), j < V; out's other rows untouched.
 * pick, its backward: row E+j of dout (R,E+V,D) += row idx[r,j] of din
 * (R,N,D) times row j of scale (NULL: 1).
 * mask_tokens: row (r,n) of out (R,N,D) = fill (D; NULL: zeros) where
 * mask[r*N+n] (uint8) is nonzero, else row (r/M, n) of src (R/M,N,D).
 * unmask_tokens, its backward: dsrc (R/M,N,D) += the rows of din (R,N,D)
 * whose mask is 0, the M copies r = b*M .. b*M+M-1 of sequence b added in
 * that order; dfill (D, or NULL) += the rows whose mask is set, in row
 * order r*N+n (a fixed order, no atomics). */
void d2v_k_place_tokens(float *out, const float *in, const int *idx,
    const float *scale, int R, int N, int V, int E, int D, cudaStream_t st);
void d2v_k_pick_tokens(float *dout, const float *din, const int *idx,
    const float *scale, int R, int N, int V, int E, int D, cudaStream_t st);
void d2v_k_mask_tokens(float *out, const float *src, const unsigned char *mask,
    const float *fill, int R, int M, int N, int D, cudaStream_t st);
void d2v_k_unmask_tokens(float *dsrc, float *dfill, const float *din,
    const unsigned char *mask, int R, int M, int N, int D, cudaStream_t st);

/* tokens.cu, continued: rows of a table by index (token embeddings).
 * gather_rows: row i of out (n,D) = row ids[i] of table (rows,D).
 * scatter_rows, its backward: row ids[i] of dtable += row i of din (n,D),
 * for i = 0, 1, ... n-1 in that order: ids repeat, and every element of
 * dtable must get its additions in increasing i (a fixed order, no
 * atomics), as the CPU adds them. */
void d2v_k_gather_rows(float *out, const float *table, const int *ids, int n,
    int D, cudaStream_t st);
void d2v_k_scatter_rows(float *dtable, const float *din, const int *ids,
    int n, int D, cudaStream_t st);

/* layerscale.cu: LayerScale of data2vec's image blocks.  forward: out
 * (rows,D) += g (D) * x (rows,D), or with s (rows,D) set, out[k] +=
 * g[d] * (x[k] * s[k]); each product rounded to float in that order and
 * then added (no FMA contraction: the CPU's bits).  backward: dg (D) +=
 * (float)(the sum over rows i of (double)dy[k] * v[k], v[k] = x[k] *
 * s[k] in float, or x[k] when s is NULL), a deterministic double sum;
 * dx (rows,D) = (dy[k] * g[d]) * s[k] (or dy[k] * g[d] when s is NULL),
 * set, not added; dx may not alias.  scratch: d2v_k_layerscale_scratch(
 * rows, D) doubles. */
void d2v_k_layerscale_forward(float *out, const float *g, const float *x,
    const float *s, int rows, int D, cudaStream_t st);
size_t d2v_k_layerscale_scratch(int rows, int D);
void d2v_k_layerscale_backward(float *dx, float *dg, const float *dy,
    const float *g, const float *x, const float *s, int rows, int D,
    double *scratch, cudaStream_t st);

/* random.cu: lib/rng.c's generator on the device, bit for bit:
 * d2v_rng_seed(seed, a, b) (splitmix64), xoshiro256**, uniform =
 * (u64 >> 11) * 2^-53, d2v_rng_normal2's Box-Muller in double.
 * noise_fill: each row (r,n) of out (R,N,D) whose mask[r*N+n] is nonzero
 * gets, from the generator keyed (seed, 0xdec0, (row0 + r) * N + n), D/2
 * (rounded up) normal pairs (a, b): out[d] = (float)(std * a), out[d+1] =
 * (float)(std * b) (the last b dropped when D is odd); other rows
 * untouched.
 * drop_fill: buf (rows, per); row r's scale s = 0 when dp > 0 and the
 * first uniform of the generator keyed (seed, kind, first + r) is < dp,
 * else (float)(1/(1-dp)) (1.0f when dp is 0); element i of the row = 0
 * when p > 0 and uniform number (i mod 4096) of the generator keyed
 * (seed, kind + ((i/4096 + 1) << 40), first + r) is < p, else keep * s
 * with keep = (float)(1/(1-p)) (1.0f when p is 0), the product in float. */
void d2v_k_noise_fill(float *out, const unsigned char *mask, int R, int N,
    int D, float std, unsigned long long seed, unsigned long long row0,
    cudaStream_t st);
void d2v_k_drop_fill(float *buf, int rows, size_t per, double p, double dp,
    unsigned long long seed, unsigned long long kind,
    unsigned long long first, cudaStream_t st);

/* loss.cu: the losses and statistics.  The selected rows: every (r,n),
 * r < R, n < N, whose mask[r*N+n] is nonzero (mask NULL: all of them);
 * row (r,n) of a (R,T,D) tensor is at (r*T + off + n) * D.
 * masked_loss: dp (R,T,D) = 0 except at the selected rows, where, with e
 * = pred[row] - y[((r/M)*N + n)*D + d] in double, dp = (float)(w * l'(e) /
 * norm); *out (one double, device) = the sum over the selected rows and
 * dims of w * l(e) in double.  l(e) = e^2 when beta is 0 (l' = 2e); else
 * 0.5 e^2 / beta when |e| < beta (l' = e / beta) and |e| - 0.5 beta
 * otherwise (l' = sign e).  scratch: d2v_k_loss_scratch(R, N, D) doubles.
 * masked_std: *out = the mean over d < D of the sample standard deviation
 * of x's selected rows at dim d, sqrt(max(s2/k - (s/k)^2, 0) * k/(k-1))
 * with k rows, s and s2 their sum and sum of squares in double; 0 when k
 * < 2.  scratch as above.
 * mean_tokens: out (B,D) = (float)(sum over n of in (B,N,D), in double,
 * / N). */
size_t d2v_k_loss_scratch(int R, int N, int D);
void d2v_k_masked_loss(double *out, float *dp, const float *pred,
    const float *y, const unsigned char *mask, int R, int M, int N, int T,
    int off, int D, double w, double beta, double norm, double *scratch,
    cudaStream_t st);
void d2v_k_masked_std(double *out, const float *x, const unsigned char *mask,
    int R, int N, int T, int off, int D, double *scratch, cudaStream_t st);
void d2v_k_mean_tokens(float *out, const float *in, int B, int N, int D,
    cudaStream_t st);

/* adamw.cu: one AdamW step over n parameters, fp32 state:
 *     m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *     p -= decay p;  p -= step m / (sqrt(v) + eps)
 * (step holds the learning rate and both bias corrections, decay is
 * lr * weight_decay or 0). */
void d2v_k_adamw(float *p, const float *g, float *m, float *v, size_t n,
    float b1, float b2, float step, float eps, float decay, cudaStream_t st);

/* ema.cu: t (n) = a t + b s */
void d2v_k_ema(float *t, const float *s, size_t n, float a, float b,
    cudaStream_t st);

/* sumsq.cu: *out (one double, device) = sum of x (n) squared, in double;
 * scratch holds d2v_k_sumsq_scratch(n) doubles. */
size_t d2v_k_sumsq_scratch(size_t n);
void d2v_k_sumsq(double *out, const float *x, size_t n, double *scratch,
    cudaStream_t st);

#ifdef __cplusplus
}
#endif

#endif
