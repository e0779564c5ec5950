/*
 * rows.h - the CPU backend's row operations (rows.c): the decoder's input,
 * the masked positions, the random fills, the losses and the statistics.
 * Their contracts are the ops of the same names in ops.h.
 */
#ifndef D2V_ROWS_H
#define D2V_ROWS_H

#include <stddef.h>
#include <stdint.h>

void d2v_cpu_copy(void *dst, const void *src, size_t bytes);
void d2v_cpu_zero(void *p, size_t bytes);
void d2v_cpu_add_bcast(float *a, const float *b, int B, size_t n);
void d2v_cpu_gather_rows(float *out, const float *table, const int32_t *ids,
    int n, int D);
void d2v_cpu_scatter_rows(float *dtable, const float *din, const int32_t *ids,
    int n, int D);
void d2v_cpu_place_tokens(float *out, const float *in, const int *idx,
    const float *scale, int R, int N, int V, int E, int D);
void d2v_cpu_pick_tokens(float *dout, const float *din, const int *idx,
    const float *scale, int R, int N, int V, int E, int D);
void d2v_cpu_mask_tokens(float *out, const float *src, const uint8_t *mask,
    const float *fill, int R, int M, int N, int D);
void d2v_cpu_unmask_tokens(float *dsrc, float *dfill, const float *din,
    const uint8_t *mask, int R, int M, int N, int D);
void d2v_cpu_noise_fill(float *out, const uint8_t *mask, int R, int N, int D,
    float std, uint64_t seed, uint64_t row0);
void d2v_cpu_drop_fill(float *buf, int rows, size_t per, double p, double dp,
    uint64_t seed, uint64_t kind, uint64_t first);
void d2v_cpu_layerscale_forward(float *out, const float *g, const float *x,
    const float *s, int rows, int D);
void d2v_cpu_layerscale_backward(float *dx, float *dg, const float *dy,
    const float *g, const float *x, const float *s, int rows, int D);
double d2v_cpu_masked_loss(float *dp, const float *pred, const float *y,
    const uint8_t *mask, int R, int M, int N, int T, int off, int D,
    double w, double beta, double norm);
double d2v_cpu_masked_std(const float *x, const uint8_t *mask, int R, int N,
    int T, int off, int D);
void d2v_cpu_mean_tokens(float *out, const float *in, int B, int N, int D);

/* The chunk of drop_fill's per-element generators (ops.h). */
#define D2V_DROP_CHUNK 4096

#endif
