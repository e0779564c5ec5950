/* bf16.c - the CPU backend with its linear layers in bf16 (see ops.h).
 *
 * Each operand of a linear layer's three products (out = in.w^T, din =
 * dout.w, dw = dout^T.in) is rounded to bf16, nearest even; the products
 * are summed in fp32, the bias and its gradient stay fp32, and every other
 * operation is the CPU table's.  Two engines compute the same numbers:
 *   onednn    oneDNN's bf16 matmul, where this CPU has one (AVX-512 BF16
 *             or AMX) and it agrees with the emulation on a test product;
 *   emulated  the rounded operands, held as fp32, through fp32 sgemm (a
 *             product of two bf16 values is exact in fp32), so a CPU
 *             without bf16 units trains with bf16's numbers, not faster.
 * The scratch buffers grow and are kept: the model calls a backend from one
 * thread, and GEMMs are never called inside an OpenMP region. */
#include "ops.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tensor.h"

#ifdef D2V_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

static d2v_ops bf16_ops;
static const d2v_ops *cpu; /* the CPU table everything else comes from */
static const char *engine_why;
static int use_dnnl;

/* three grow-only scratch buffers: the rounded operands of one product */
static void *scr[3];
static size_t scr_n[3]; /* bytes */

static void *
scratch(int i, size_t bytes)
{
	if (bytes > scr_n[i]) {
		void *p = realloc(scr[i], bytes);

		if (p == NULL)
			return NULL;
		scr[i] = p;
		scr_n[i] = bytes;
	}
	return scr[i];
}

void
d2v_bf16_round(float *out, const float *in, size_t n)
{
#pragma omp parallel for schedule(static) if (n > 65536)
	for (size_t i = 0; i < n; i++)
		out[i] = d2v_bf16_to_f32(d2v_f32_to_bf16(in[i]));
}

/* ---- emulated: rounded fp32 operands through the CPU table's sgemm ---- */

static void
emu_forward(float *out, const float *in, const float *w, const float *b,
    int M, int K, int N)
{
	float *ri = scratch(0, (size_t)M * K * sizeof(float)); /* (M,K) */
	float *rw = scratch(1, (size_t)N * K * sizeof(float)); /* (N,K) */

	if (ri == NULL || rw == NULL) { /* out of memory: fp32, not a crash */
		cpu->matmul_forward(out, in, w, b, M, K, N);
		return;
	}
	d2v_bf16_round(ri, in, (size_t)M * K);
	d2v_bf16_round(rw, w, (size_t)N * K);
	cpu->matmul_forward(out, ri, rw, b, M, K, N);
}

static void
emu_backward(float *din, float *dw, const float *dout, const float *in,
    const float *w, int M, int K, int N)
{
	float *rd = scratch(0, (size_t)M * N * sizeof(float)); /* (M,N) */
	float *ri = dw ? scratch(1, (size_t)M * K * sizeof(float)) : NULL;
	float *rw = din ? scratch(2, (size_t)N * K * sizeof(float)) : NULL;

	if (rd == NULL || (dw && ri == NULL) || (din && rw == NULL)) {
		cpu->matmul_backward(din, dw, NULL, dout, in, w, M, K, N);
		return;
	}
	d2v_bf16_round(rd, dout, (size_t)M * N);
	if (dw)
		d2v_bf16_round(ri, in, (size_t)M * K);
	if (din)
		d2v_bf16_round(rw, w, (size_t)N * K);
	cpu->matmul_backward(din, dw, NULL, rd, ri, rw, M, K, N);
}

/* ---- oneDNN ---- */

#ifdef D2V_HAVE_DNNL
/* bits (n) = bf16(in (n)) */
static void
to_bits(uint16_t *bits, const float *in, size_t n)
{
#pragma omp parallel for schedule(static) if (n > 65536)
	for (size_t i = 0; i < n; i++)
		bits[i] = d2v_f32_to_bf16(in[i]);
}

static dnnl_engine_t eng;
static dnnl_stream_t strm;

/* dst (m,n) (+)= a . b, a (m,k) bf16 stored as ta, b (k,n) bf16 stored as
 * tb, bias (n) f32 or NULL; accumulate adds to dst.  0, or -1 when oneDNN
 * cannot (the caller falls back). */
static int
od_mm(float *dst, const uint16_t *a, dnnl_format_tag_t ta,
    const uint16_t *b, dnnl_format_tag_t tb, const float *bias, int m,
    int k, int n, int accumulate)
{
	dnnl_memory_desc_t ad, bd, cd, zd;
	dnnl_dims_t da = {m, k}, db = {k, n}, dc = {m, n}, dz = {1, n};
	dnnl_matmul_desc_t md;
	dnnl_primitive_attr_t attr = NULL;
	dnnl_post_ops_t po = NULL;
	dnnl_primitive_desc_t pd = NULL;
	dnnl_primitive_t p = NULL;
	dnnl_memory_t am = NULL, bm = NULL, cm = NULL, zm = NULL;
	int rc = -1;

	if (dnnl_memory_desc_init_by_tag(&ad, 2, da, dnnl_bf16, ta) ||
	    dnnl_memory_desc_init_by_tag(&bd, 2, db, dnnl_bf16, tb) ||
	    dnnl_memory_desc_init_by_tag(&cd, 2, dc, dnnl_f32, dnnl_ab) ||
	    dnnl_memory_desc_init_by_tag(&zd, 2, dz, dnnl_f32, dnnl_ab) ||
	    dnnl_matmul_desc_init(&md, &ad, &bd, bias ? &zd : NULL, &cd) ||
	    dnnl_primitive_attr_create(&attr) || dnnl_post_ops_create(&po))
		goto out;
	if (accumulate && (dnnl_post_ops_append_sum(po, 1.0f) ||
	    dnnl_primitive_attr_set_post_ops(attr, po)))
		goto out;
	if (dnnl_primitive_desc_create(&pd, &md, attr, eng, NULL) ||
	    dnnl_primitive_create(&p, pd) ||
	    dnnl_memory_create(&am, &ad, eng, (void *)a) ||
	    dnnl_memory_create(&bm, &bd, eng, (void *)b) ||
	    dnnl_memory_create(&cm, &cd, eng, dst) ||
	    (bias && dnnl_memory_create(&zm, &zd, eng, (void *)bias)))
		goto out;
	{
		dnnl_exec_arg_t args[4] = {
			{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm},
			{DNNL_ARG_DST, cm}, {DNNL_ARG_BIAS, zm},
		};

		if (dnnl_primitive_execute(p, strm, bias ? 4 : 3, args) ||
		    dnnl_stream_wait(strm))
			goto out;
	}
	rc = 0;
out:
	if (zm)
		dnnl_memory_destroy(zm);
	if (cm)
		dnnl_memory_destroy(cm);
	if (bm)
		dnnl_memory_destroy(bm);
	if (am)
		dnnl_memory_destroy(am);
	if (p)
		dnnl_primitive_destroy(p);
	if (pd)
		dnnl_primitive_desc_destroy(pd);
	if (po)
		dnnl_post_ops_destroy(po);
	if (attr)
		dnnl_primitive_attr_destroy(attr);
	return rc;
}

static int
od_forward(float *out, const float *in, const float *w, const float *b,
    int M, int K, int N)
{
	uint16_t *bi = scratch(0, (size_t)M * K * 2); /* (M,K) */
	uint16_t *bw = scratch(1, (size_t)N * K * 2); /* (N,K) */

	if (bi == NULL || bw == NULL)
		return -1;
	to_bits(bi, in, (size_t)M * K);
	to_bits(bw, w, (size_t)N * K);
	/* w (N,K) row-major is w^T (K,N) in the "ba" layout */
	return od_mm(out, bi, dnnl_ab, bw, dnnl_ba, b, M, K, N, 0);
}

/* din (M,K) += dout . w and dw (N,K) += dout^T . in through oneDNN, dout
 * rounded once for both; a product done sets its pointer to NULL, so
 * what is left non-NULL (out of memory) is for the emulation to do. */
static void
od_backward(float **din, float **dw, const float *dout, const float *in,
    const float *w, int M, int K, int N)
{
	uint16_t *bd = scratch(0, (size_t)M * N * 2); /* (M,N) */
	uint16_t *bi = *dw ? scratch(1, (size_t)M * K * 2) : NULL; /* (M,K) */
	uint16_t *bw = *din ? scratch(2, (size_t)N * K * 2) : NULL; /* (N,K) */

	if (bd == NULL)
		return;
	to_bits(bd, dout, (size_t)M * N);
	if (*din && bw) {
		to_bits(bw, w, (size_t)N * K);
		if (od_mm(*din, bd, dnnl_ab, bw, dnnl_ab, NULL, M, N, K, 1) == 0)
			*din = NULL;
	}
	if (*dw && bi) { /* dout^T (N,M) is dout in the "ba" layout */
		to_bits(bi, in, (size_t)M * K);
		if (od_mm(*dw, bd, dnnl_ba, bi, dnnl_ab, NULL, N, M, K, 1) == 0)
			*dw = NULL;
	}
}
#endif

static void
bf16_forward(float *out, const float *in, const float *w, const float *b,
    int M, int K, int N)
{
#ifdef D2V_HAVE_DNNL
	if (use_dnnl && od_forward(out, in, w, b, M, K, N) == 0)
		return;
#endif
	emu_forward(out, in, w, b, M, K, N);
}

static void
bf16_backward(float *din, float *dw, float *db, const float *dout,
    const float *in, const float *w, int M, int K, int N)
{
	if (db != NULL) /* the bias gradient from the fp32 dout */
		cpu->matmul_backward(NULL, NULL, db, dout, NULL, NULL, M, K, N);
	if (din == NULL && dw == NULL)
		return;
#ifdef D2V_HAVE_DNNL
	/* a product oneDNN could not run (out of memory: the self-test
	 * passed) is the only one emulated */
	if (use_dnnl) {
		od_backward(&din, &dw, dout, in, w, M, K, N);
		if (din == NULL && dw == NULL)
			return;
	}
#endif
	emu_backward(din, dw, dout, in, w, M, K, N);
}

#ifdef D2V_HAVE_DNNL
/* *num += ||a - b||^2, *den += ||b||^2 over n floats */
static void
sq_diff(double *num, double *den, const float *a, const float *b, int n)
{
	for (int i = 0; i < n; i++) {
		*num += (a[i] - b[i]) * (double)(a[i] - b[i]);
		*den += (double)b[i] * b[i];
	}
}

/* oneDNN's bf16 matmul on an odd-sized test product, against the
 * emulation; 0 when it runs and agrees */
static int
od_selftest(void)
{
	enum { M = 19, K = 37, N = 23 };
	float in[M * K], w[N * K], b[N], dout[M * N];
	float o1[M * N], o2[M * N], g1[M * K], g2[M * K], v1[N * K], v2[N * K];
	float *gp = g1, *vp = v1;
	double num = 0, den = 0;
	uint32_t s = 12345;

	for (int i = 0; i < M * K; i++)
		in[i] = (float)((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
	for (int i = 0; i < N * K; i++)
		w[i] = (float)((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
	for (int i = 0; i < N; i++)
		b[i] = (float)i * 0.01f;
	for (int i = 0; i < M * N; i++)
		dout[i] = (float)((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
	memset(g1, 0, sizeof g1);
	memset(g2, 0, sizeof g2);
	memset(v1, 0, sizeof v1);
	memset(v2, 0, sizeof v2);
	if (od_forward(o1, in, w, b, M, K, N) < 0)
		return -1;
	od_backward(&gp, &vp, dout, in, w, M, K, N);
	if (gp != NULL || vp != NULL)
		return -1;
	emu_forward(o2, in, w, b, M, K, N);
	emu_backward(g2, v2, dout, in, w, M, K, N);
	sq_diff(&num, &den, o1, o2, M * N);
	sq_diff(&num, &den, g1, g2, M * K);
	sq_diff(&num, &den, v1, v2, N * K);
	return sqrt(num / den) < 1e-5 ? 0 : -1;
}
#endif

const d2v_ops *
d2v_backend_cpu_bf16(const char **why)
{
	if (cpu == NULL) {
		cpu = d2v_backend_cpu();
		bf16_ops = *cpu;
		bf16_ops.name = "cpu-bf16";
		bf16_ops.matmul_forward = bf16_forward;
		bf16_ops.matmul_backward = bf16_backward;
		engine_why = "emulated: this build has no oneDNN; the rounded "
		    "operands go through fp32 sgemm (bf16's numbers, not its speed)";
#ifdef D2V_HAVE_DNNL
		if (getenv("D2V_BF16_EMULATE") != NULL) {
			engine_why = "emulated (D2V_BF16_EMULATE is set): the "
			    "rounded operands go through fp32 sgemm";
		} else if (dnnl_engine_create(&eng, dnnl_cpu, 0) ||
		    dnnl_stream_create(&strm, eng, dnnl_stream_default_flags)) {
			engine_why = "emulated: oneDNN has no CPU engine here; the "
			    "rounded operands go through fp32 sgemm";
		} else {
			use_dnnl = 1;
			if (od_selftest() == 0) {
				engine_why = "onednn: oneDNN's bf16 matmul";
			} else {
				use_dnnl = 0;
				engine_why = "emulated: oneDNN has no bf16 matmul "
				    "for this CPU (it needs AVX-512 BF16 or AMX); "
				    "the rounded operands go through fp32 sgemm "
				    "(bf16's numbers, not its speed)";
			}
		}
#endif
	}
	if (why != NULL)
		*why = engine_why;
	return &bf16_ops;
}

int
d2v_bf16_onednn(void)
{
	d2v_backend_cpu_bf16(NULL);
	return use_dnnl;
}
