/*
 * layerscale.cu - LayerScale of data2vec's image blocks: out += g * x (or
 * g * (x * s) with a per-element scale s, the drop-path one), and its
 * backward.
 *
 * forward: a grid-stride loop over rows D elements, 256 threads a block,
 * at most LS_MAXGRID blocks; the column kept with an increment, as
 * bias_add.  Each product is rounded to float (__fmul_rn), then added
 * (__fadd_rn): no FMA contraction, the CPU's bits.
 *
 * backward: one pass over dy, x, s in blocks of 32 x 8 threads over (32
 * columns, one chunk of rpc rows), the chunks a function of rows only
 * (about 64 rows each, at most LS_MAXCHUNK).  Each thread writes dx =
 * (dy * g) * s for its elements and adds (double)dy * v over its rows of
 * the chunk (rows r0 + ty, r0 + ty + 8, ...); the 8 lanes' sums are added
 * in order into scratch (nchunk, D) as doubles.  A second kernel, one
 * thread per column, adds the nchunk partials in order, in double, rounds
 * the sum to float and adds it to dg.  The product of two floats is exact
 * in double, so the sum's bits depend only on that fixed order.
 */
#include "chunks.h"
#include "kernels.h"

#define LS_THREADS 256
#define LS_MAXGRID 8192
#define LS_COLS 32		/* columns per block of the backward */
#define LS_LANES 8		/* row lanes per block of the backward */
#define LS_MAXCHUNK 256		/* most row chunks */

/* out (rows,D) += g (D) * x, or g * (x * s) with s; n = rows D */
static __global__ void
ls_forward_kernel(float *out, const float *g, const float *x,
    const float *s, size_t n, int D)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	unsigned c = (unsigned)(i % D), step = (unsigned)(stride % D);

	for (; i < n; i += stride) {
		float v = s != NULL ? __fmul_rn(x[i], s[i]) : x[i];

		out[i] = __fadd_rn(out[i], __fmul_rn(g[c], v));
		c += step;	/* < 2D < 2^32 */
		if (c >= (unsigned)D)
			c -= D;
	}
}

/* dx (rows,D) = (dy * g) * s (or dy * g), when dx is not NULL; part
 * (nchunk, D) doubles: part[k][c] = the sum of (double)dy * v over the
 * rows [k rpc, k rpc + rpc) of column c, when part is not NULL.  Grid
 * (ceil(D/32), nchunk), block (32, 8). */
static __global__ void
ls_backward_partial(float *__restrict__ dx, double *part, const float *dy,
    const float *g, const float *x, const float *s, int rows, int D,
    int rpc)
{
	__shared__ double sh[LS_LANES][LS_COLS];
	int tx = threadIdx.x, ty = threadIdx.y;
	int c = blockIdx.x * LS_COLS + tx;
	int r0 = blockIdx.y * rpc, r1 = min(r0 + rpc, rows);
	double acc = 0;

	if (c < D) {
		float gc = g[c];

		for (int r = r0 + ty; r < r1; r += LS_LANES) {
			size_t k = (size_t)r * D + c;
			float d = dy[k], v = x[k];

			if (s != NULL) {
				float sk = s[k];

				v = __fmul_rn(v, sk);
				if (dx != NULL)
					dx[k] = __fmul_rn(__fmul_rn(d, gc), sk);
			} else if (dx != NULL)
				dx[k] = __fmul_rn(d, gc);
			acc += (double)d * (double)v;	/* exact product */
		}
	}
	if (part == NULL)	/* the same for the whole block */
		return;
	sh[ty][tx] = acc;
	__syncthreads();
	if (ty == 0 && c < D) {
		double t = 0;

		for (int k = 0; k < LS_LANES; k++)
			t += sh[k][tx];
		part[(size_t)blockIdx.y * D + c] = t;
	}
}

/* dg (D) += (float)(the sum of part (nchunk, D) over the chunks, in
 * order, in double) */
static __global__ void
ls_backward_final(float *dg, const double *part, int D, int nchunk)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	double t = 0;

	if (c >= D)
		return;
	for (int k = 0; k < nchunk; k++)
		t += part[(size_t)k * D + c];
	dg[c] = __fadd_rn(dg[c], (float)t);
}

extern "C" void
d2v_k_layerscale_forward(float *out, const float *g, const float *x,
    const float *s, int rows, int D, cudaStream_t st)
{
	size_t n, b;

	if (rows <= 0 || D <= 0)
		return;
	n = (size_t)rows * D;
	b = (n + LS_THREADS - 1) / LS_THREADS;
	ls_forward_kernel<<<(unsigned)(b < LS_MAXGRID ? b : LS_MAXGRID),
	    LS_THREADS, 0, st>>>(out, g, x, s, n, D);
}

extern "C" size_t
d2v_k_layerscale_scratch(int rows, int D)
{
	int nchunk, rpc;

	d2v_k_row_chunks(rows, LS_MAXCHUNK, &nchunk, &rpc);
	return (size_t)nchunk * (size_t)(D > 0 ? D : 0);
}

extern "C" void
d2v_k_layerscale_backward(float *dx, float *dg, const float *dy,
    const float *g, const float *x, const float *s, int rows, int D,
    double *scratch, cudaStream_t st)
{
	int nchunk, rpc;
	dim3 grid, block(LS_COLS, LS_LANES);

	if (rows <= 0 || D <= 0 || (dx == NULL && dg == NULL))
		return;
	d2v_k_row_chunks(rows, LS_MAXCHUNK, &nchunk, &rpc);
	grid = dim3((D + LS_COLS - 1) / LS_COLS, nchunk);
	ls_backward_partial<<<grid, block, 0, st>>>(dx, dg != NULL ? scratch :
	    NULL, dy, g, x, s, rows, D, rpc);
	if (dg != NULL)
		ls_backward_final<<<(D + 255) / 256, 256, 0, st>>>(dg, scratch,
		    D, nchunk);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "layerscale"

/* The reference's float operations, each rounded (volatile: no
 * contraction by the host compiler either). */
static float
ref_mul(float a, float b)
{
	volatile float r = a * b;

	return r;
}

static float
ref_add(float a, float b)
{
	volatile float r = a + b;

	return r;
}

/* f's position on the line of floats (both zeros at 0) */
static int64_t
ord(float f)
{
	int32_t i;

	memcpy(&i, &f, 4);
	return i >= 0 ? (int64_t)i : -(int64_t)(i & 0x7fffffff);
}

/* the most ulps (floats apart) between got (n) and ref (n); a NaN gives
 * INT64_MAX */
static int64_t
max_ulps(const float *got, const float *ref, size_t n)
{
	int64_t worst = 0;

	for (size_t i = 0; i < n; i++) {
		int64_t e = isnan(got[i]) || isnan(ref[i]) ? INT64_MAX :
		    ord(got[i]) - ord(ref[i]);

		if (e < 0)
			e = -e;
		if (e > worst)
			worst = e;
	}
	return worst;
}

static int
report_ulps(const char *what, int64_t ulps, int64_t tol)
{
	printf("%s: %-44s %lld ulps (tol %lld) %s\n", NAME, what,
	    (long long)ulps, (long long)tol, ulps <= tol ? "PASS" : "FAIL");
	return ulps > tol;
}

/* forward and backward on (rows, D), with s or without; failures */
static int
check(int rows, int D, int with_s, lab_rng *rng, cudaStream_t st)
{
	size_t n = (size_t)rows * D;
	float *x = (float *)lab_halloc(n * sizeof(float));
	float *s = (float *)lab_halloc(n * sizeof(float));
	float *dy = (float *)lab_halloc(n * sizeof(float));
	float *out0 = (float *)lab_halloc(n * sizeof(float));
	float *g = (float *)lab_halloc(D * sizeof(float));
	float *dg0 = (float *)lab_halloc(D * sizeof(float));
	float *ref = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	float *dg1 = (float *)lab_halloc(D * sizeof(float));
	float *d_x, *d_s, *d_dy, *d_out, *d_g, *d_dg, *d_dx;
	double *d_scr;
	const float *sp;
	const char *tag = with_s ? " s" : "";
	char what[96];
	int fails = 0;

	lab_fill(x, n, -1, 1, rng);
	lab_fill(dy, n, -1, 1, rng);
	lab_fill(out0, n, -1, 1, rng);
	lab_fill(g, D, -0.5f, 0.5f, rng);
	lab_fill(dg0, D, -1, 1, rng);
	for (size_t i = 0; i < n; i++)	/* a drop-path like scale, some 0 */
		s[i] = lab_uniform(rng, 0, 1) < 0.1f ? 0 :
		    lab_uniform(rng, 0.5f, 2);
	d_x = lab_dup(x, n);
	d_s = lab_dup(s, n);
	d_dy = lab_dup(dy, n);
	d_out = lab_dup(out0, n);
	d_g = lab_dup(g, D);
	d_dg = (float *)lab_dalloc(D * sizeof(float));
	d_dx = (float *)lab_dalloc(n * sizeof(float));
	d_scr = (double *)lab_dalloc(d2v_k_layerscale_scratch(rows, D) *
	    sizeof(double));
	sp = with_s ? d_s : NULL;

	/* forward: out + g * (x * s), each operation rounded, in float */
	for (size_t i = 0; i < n; i++) {
		float v = with_s ? ref_mul(x[i], s[i]) : x[i];

		ref[i] = ref_add(out0[i], ref_mul(g[i % D], v));
	}
	d2v_k_layerscale_forward(d_out, d_g, d_x, sp, rows, D, st);
	lab_sync(st);
	lab_get(got, d_out, n);
	snprintf(what, sizeof what, "forward (+=) rows %d D %d%s", rows, D, tag);
	fails += lab_report_bits(NAME, what, lab_bits_differ(got, ref, n));

	/* backward dx: (dy * g) * s in float, set (dx starts as NaNs) */
	for (size_t i = 0; i < n; i++) {
		float d = ref_mul(dy[i], g[i % D]);

		ref[i] = with_s ? ref_mul(d, s[i]) : d;
	}
	LAB_CK(cudaMemset(d_dx, 0xff, n * sizeof(float)));
	LAB_CK(cudaMemset(d_dg, 0, D * sizeof(float)));
	d2v_k_layerscale_backward(d_dx, d_dg, d_dy, d_g, d_x, sp, rows, D,
	    d_scr, st);
	lab_sync(st);
	lab_get(got, d_dx, n);
	snprintf(what, sizeof what, "backward dx rows %d D %d%s", rows, D, tag);
	fails += lab_report_bits(NAME, what, lab_bits_differ(got, ref, n));

	/* dg from 0: (float) of the double sum.  The reference sums the
	 * exact products in long double (64-bit mantissa); the device's
	 * double sum of rows terms is within rows 2^-53 sum |terms| of the
	 * exact one, about 1e-13 of the sum here (and far less on random
	 * signs), so its float rounding is the reference's or its
	 * neighbour: 1 ulp. */
	for (int c = 0; c < D; c++) {
		long double t = 0;

		for (int r = 0; r < rows; r++) {
			size_t k = (size_t)r * D + c;
			float v = with_s ? ref_mul(x[k], s[k]) : x[k];

			t += (long double)((double)dy[k] * v);
		}
		ref[c] = (float)t;
	}
	lab_get(dg1, d_dg, D);
	snprintf(what, sizeof what, "backward dg (from 0) rows %d D %d%s", rows,
	    D, tag);
	fails += report_ulps(what, max_ulps(dg1, ref, D), 1);

	/* dg (+=) from dg0: dg0 + the same float sum, one float add; bit
	 * for bit against the first run's sum (so also repeatable) */
	for (int c = 0; c < D; c++)
		ref[c] = ref_add(dg0[c], dg1[c]);
	LAB_CK(cudaMemcpy(d_dg, dg0, D * sizeof(float), cudaMemcpyHostToDevice));
	d2v_k_layerscale_backward(d_dx, d_dg, d_dy, d_g, d_x, sp, rows, D,
	    d_scr, st);
	lab_sync(st);
	lab_get(got, d_dg, D);
	snprintf(what, sizeof what, "backward dg (+=, repeat) rows %d D %d%s",
	    rows, D, tag);
	fails += lab_report_bits(NAME, what, lab_bits_differ(got, ref, D));

	/* the NULL gradients, on the larger shapes: dx alone, dg alone */
	if (rows > 1 && D > 1) {
		for (size_t i = 0; i < n; i++) {
			float d = ref_mul(dy[i], g[i % D]);

			ref[i] = with_s ? ref_mul(d, s[i]) : d;
		}
		LAB_CK(cudaMemset(d_dx, 0xff, n * sizeof(float)));
		d2v_k_layerscale_backward(d_dx, NULL, d_dy, d_g, d_x, sp, rows,
		    D, d_scr, st);
		lab_sync(st);
		lab_get(got, d_dx, n);
		fails += lab_report_bits(NAME, "  dg NULL: dx", lab_bits_differ(got, ref, n));

		LAB_CK(cudaMemset(d_dg, 0, D * sizeof(float)));
		d2v_k_layerscale_backward(NULL, d_dg, d_dy, d_g, d_x, sp, rows,
		    D, d_scr, st);
		lab_sync(st);
		lab_get(got, d_dg, D);
		fails += lab_report_bits(NAME, "  dx NULL: dg (as from 0)",
		    lab_bits_differ(got, dg1, D));
	}

	free(x), free(s), free(dy), free(out0), free(g), free(dg0), free(ref);
	free(got), free(dg1);
	cudaFree(d_x), cudaFree(d_s), cudaFree(d_dy), cudaFree(d_out);
	cudaFree(d_g), cudaFree(d_dg), cudaFree(d_dx), cudaFree(d_scr);
	return fails;
}

typedef struct bench_arg {
	float *out, *g, *x, *s, *dy, *dx, *dg;
	double *scr;
	int rows, D;
} bench_arg;

static void
bench_fwd(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_layerscale_forward(a->out, a->g, a->x, NULL, a->rows, a->D, st);
}

static void
bench_fwd_s(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_layerscale_forward(a->out, a->g, a->x, a->s, a->rows, a->D, st);
}

static void
bench_bwd(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_layerscale_backward(a->dx, a->dg, a->dy, a->g, a->x, NULL,
	    a->rows, a->D, a->scr, st);
}

static void
bench_bwd_s(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_layerscale_backward(a->dx, a->dg, a->dy, a->g, a->x, a->s,
	    a->rows, a->D, a->scr, st);
}

int
main(void)
{
	static const int rs[] = {1, 7, 197 * 8}, Ds[] = {1, 31, 192, 768};
	lab_rng rng = {23};
	cudaStream_t st;
	bench_arg a;
	size_t n;
	double fb;
	int fails = 0;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 4; j++)
			for (int k = 0; k < 2; k++)
				fails += check(rs[i], Ds[j], k, &rng, st);
	/* rows 0 and D 0 queue nothing (NULL pointers would fault) */
	d2v_k_layerscale_forward(NULL, NULL, NULL, NULL, 0, 768, st);
	d2v_k_layerscale_forward(NULL, NULL, NULL, NULL, 7, 0, st);
	d2v_k_layerscale_backward(NULL, NULL, NULL, NULL, NULL, NULL, 0, 768,
	    NULL, st);
	d2v_k_layerscale_backward(NULL, NULL, NULL, NULL, NULL, NULL, 7, 0,
	    NULL, st);
	lab_sync(st);
	printf("%s: %-44s PASS\n", NAME, "rows 0, D 0: nothing queued");
	lab_verdict(NAME, fails);

	/* ViT-B: 64 images of 197 tokens, width 768 */
	a.rows = 64 * 197;
	a.D = 768;
	n = (size_t)a.rows * a.D;
	fb = (double)n * sizeof(float);
	a.out = (float *)lab_dalloc(n * sizeof(float));
	a.x = (float *)lab_dalloc(n * sizeof(float));
	a.s = (float *)lab_dalloc(n * sizeof(float));
	a.dy = (float *)lab_dalloc(n * sizeof(float));
	a.dx = (float *)lab_dalloc(n * sizeof(float));
	a.g = (float *)lab_dalloc(a.D * sizeof(float));
	a.dg = (float *)lab_dalloc(a.D * sizeof(float));
	a.scr = (double *)lab_dalloc(d2v_k_layerscale_scratch(a.rows, a.D) *
	    sizeof(double));
	lab_dev_fill(a.out, n, -1, 1, 1);
	lab_dev_fill(a.x, n, -1, 1, 2);
	lab_dev_fill(a.s, n, 0, 2, 3);
	lab_dev_fill(a.dy, n, -1, 1, 4);
	lab_dev_fill(a.g, a.D, -0.1f, 0.1f, 5);
	lab_dev_fill(a.dg, a.D, -1, 1, 6);
	snprintf(what, sizeof what, "forward rows %d D %d", a.rows, a.D);
	/* bytes: out read and written, x read (g small) */
	lab_bench(NAME, what, 3 * fb, lab_time_ms(bench_fwd, &a, st));
	snprintf(what, sizeof what, "forward rows %d D %d s", a.rows, a.D);
	/* bytes: out read and written, x and s read */
	lab_bench(NAME, what, 4 * fb, lab_time_ms(bench_fwd_s, &a, st));
	snprintf(what, sizeof what, "backward rows %d D %d", a.rows, a.D);
	/* bytes: dy and x read, dx written (the partials small) */
	lab_bench(NAME, what, 3 * fb, lab_time_ms(bench_bwd, &a, st));
	snprintf(what, sizeof what, "backward rows %d D %d s", a.rows, a.D);
	/* bytes: dy, x and s read, dx written */
	lab_bench(NAME, what, 4 * fb, lab_time_ms(bench_bwd_s, &a, st));
	return 0;
}
#endif
