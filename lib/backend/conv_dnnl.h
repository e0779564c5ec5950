/*
 * conv_dnnl.h - grouped convolutions through oneDNN's JIT kernels (the
 * CPU backend's fast path where the build has oneDNN).
 *
 * The layouts are d2v's: activations channels-last (R, H, W, C), which
 * is oneDNN's nhwc, and weights (Co, Ci/G, kh, kw), which is its goihw.
 * The primitives pick their own weight layout; the weights are reordered
 * into it on each call and the weight gradient back out of it.  Each
 * shape's primitives are made once and kept.  A shape for which oneDNN
 * has only its reference kernel is left to the caller, as is everything
 * when oneDNN is missing (and whenever the CPU backend's d2v_cpu_conv_own
 * is set).
 */
#ifndef D2V_CONV_DNNL_H
#define D2V_CONV_DNNL_H

typedef struct d2v_conv_geom {
	int R;                /* sequences or images */
	int Hi, Wi, Ho, Wo;   /* input and output grid */
	int Ci, Co, G;        /* channels, groups */
	int kh, kw, st;       /* kernel, stride (both dimensions) */
	int ph, pw;           /* zero padding before each dimension */
} d2v_conv_geom;

/* out (R,Ho,Wo,Co) = in (R,Hi,Wi,Ci) * w + b (b may be NULL): 0, or -1
 * when oneDNN does not take this shape (nothing written). */
int d2v_dnnl_conv_forward(float *out, const float *in, const float *w,
    const float *b, const d2v_conv_geom *c);

/* din += dconv/din, dw += ..., db += the sums of dout (each may be NULL):
 * 0, or -1 when oneDNN does not take this shape (nothing written). */
int d2v_dnnl_conv_backward(float *din, float *dw, float *db,
    const float *dout, const float *in, const float *w,
    const d2v_conv_geom *c);

/* "jit:avx512_core" for the forward kernel oneDNN runs on this shape, or
 * NULL where it does not take it (for tests and benchmarks). */
const char *d2v_dnnl_conv_impl(const d2v_conv_geom *c);

#endif
