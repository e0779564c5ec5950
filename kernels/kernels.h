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
