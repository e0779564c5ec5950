/*
 * layernorm.cu - LayerNorm over the last dim C of rows (rows,C), and its
 * backward.
 *
 * Forward and the din part of the backward: one warp per row (8 rows per
 * block of 256 threads), lanes strided over C, the row sums in double by
 * an xor butterfly of warp shuffles (every lane ends with the same bits).
 * The mean and the variance are two passes over the row (the second and
 * third reads come from L1/L2), and x - mean is taken in double before it
 * is rounded, as the CPU backend does: a row whose mean is large next to
 * its spread keeps its precision.
 *
 * dw and db: column sums over the rows, deterministic in two kernels.  The
 * rows are cut into nchunk chunks of rpc rows (a function of rows only);
 * a block of 32 x 8 threads sums 32 columns of one chunk in double (8 row
 * lanes, then the 8 partials in order) into scratch as doubles (from the
 * first 8-byte boundary of the float scratch), and a second kernel adds
 * the nchunk partials of each column in order, in double, to the
 * gradient, rounded once.
 */
#include <stdint.h>

#include "chunks.h"
#include "kernels.h"

#define LN_WARPS 8		/* rows per block, forward and din */
#define LN_COLS 32		/* columns per block of the dw/db partials */
#define LN_LANES 8		/* row lanes per block of the dw/db partials */
#define LN_MAXCHUNK 256		/* most row chunks of the dw/db partials */
#define LN_MAXGRID 65535	/* most blocks of the row kernels */

static __device__ double
warp_sum(double v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* out (rows,C) = (in - mean) rstd [* w + b]; mean, rstd (rows) saved
 * unless NULL; w, b (C) or NULL. */
static __global__ void
layernorm_forward_kernel(float *out, float *mean, float *rstd,
    const float *in, const float *w, const float *b, int rows, int C,
    float eps)
{
	int lane = threadIdx.x % 32;

	for (size_t row = (size_t)blockIdx.x * LN_WARPS + threadIdx.x / 32;
	    row < (size_t)rows; row += (size_t)gridDim.x * LN_WARPS) {
		const float *x = in + row * C;
		float *y = out + row * C;
		double s = 0, v = 0, m;
		float rs;

		for (int c = lane; c < C; c += 32)
			s += x[c];
		m = warp_sum(s) / C;
		for (int c = lane; c < C; c += 32) {
			double d = x[c] - m;

			v += d * d;
		}
		v = warp_sum(v) / C;
		rs = (float)(1.0 / sqrt(v + eps));
		for (int c = lane; c < C; c += 32) {
			float n = (float)(x[c] - m) * rs;

			if (w != NULL)
				n *= w[c];
			if (b != NULL)
				n += b[c];
			y[c] = n;
		}
		if (lane == 0) {
			if (mean != NULL)
				mean[row] = (float)m;
			if (rstd != NULL)
				rstd[row] = rs;
		}
	}
}

/* din (rows,C) += rstd (g - mean(g) - xhat mean(g xhat)), g = dout w (or
 * dout when w is NULL), xhat = (in - mean) rstd; dout, in (rows,C); mean,
 * rstd (rows); w (C) or NULL. */
static __global__ void
layernorm_din_kernel(float *din, const float *dout, const float *in,
    const float *mean, const float *rstd, const float *w, int rows, int C)
{
	int lane = threadIdx.x % 32;

	for (size_t row = (size_t)blockIdx.x * LN_WARPS + threadIdx.x / 32;
	    row < (size_t)rows; row += (size_t)gridDim.x * LN_WARPS) {
		const float *x = in + row * C;
		const float *dy = dout + row * C;
		float *dx = din + row * C;
		float m = mean[row], rs = rstd[row], a, bs;
		double sa = 0, sb = 0;

		for (int c = lane; c < C; c += 32) {
			float xh = (x[c] - m) * rs;
			float g = w != NULL ? dy[c] * w[c] : dy[c];

			sa += g;
			sb += (double)g * xh;
		}
		a = (float)(warp_sum(sa) / C);
		bs = (float)(warp_sum(sb) / C);
		for (int c = lane; c < C; c += 32) {
			float xh = (x[c] - m) * rs;
			float g = w != NULL ? dy[c] * w[c] : dy[c];

			dx[c] += rs * (g - a - xh * bs);
		}
	}
}

/* part (2, nchunk, C) doubles: part[0][k][c] = sum over the rows of chunk
 * k of dout xhat, part[1][k][c] = of dout; chunk k is rows [k rpc, k rpc +
 * rpc).  Grid (ceil(C/32), nchunk), block (32, 8). */
static __global__ void
layernorm_dwdb_partial(double *part, const float *dout, const float *in,
    const float *mean, const float *rstd, int rows, int C, int rpc,
    int nchunk)
{
	__shared__ double sw[LN_LANES][LN_COLS], sb[LN_LANES][LN_COLS];
	int tx = threadIdx.x, ty = threadIdx.y;
	int c = blockIdx.x * LN_COLS + tx;
	int r0 = blockIdx.y * rpc, r1 = min(r0 + rpc, rows);
	double aw = 0, ab = 0;

	if (c < C) {
		for (int r = r0 + ty; r < r1; r += LN_LANES) {
			size_t k = (size_t)r * C + c;
			double dy = dout[k];

			aw += dy * (((double)in[k] - mean[r]) * rstd[r]);
			ab += dy;
		}
	}
	sw[ty][tx] = aw;
	sb[ty][tx] = ab;
	__syncthreads();
	if (ty == 0 && c < C) {
		double w = 0, b = 0;

		for (int k = 0; k < LN_LANES; k++) {
			w += sw[k][tx];
			b += sb[k][tx];
		}
		part[(size_t)blockIdx.y * C + c] = w;
		part[((size_t)nchunk + blockIdx.y) * C + c] = b;
	}
}

/* dw, db (C) += the sums over the chunks of part (2, nchunk, C), in
 * order, in double, rounded once; either may be NULL. */
static __global__ void
layernorm_dwdb_final(float *dw, float *db, const double *part, int C,
    int nchunk)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	double sw = 0, sb = 0;

	if (c >= C)
		return;
	for (int k = 0; k < nchunk; k++) {
		sw += part[(size_t)k * C + c];
		sb += part[((size_t)nchunk + k) * C + c];
	}
	if (dw != NULL)
		dw[c] = (float)(dw[c] + sw);
	if (db != NULL)
		db[c] = (float)(db[c] + sb);
}

static int
row_grid(int rows)
{
	int g = (rows + LN_WARPS - 1) / LN_WARPS;

	return g < LN_MAXGRID ? g : LN_MAXGRID;
}

extern "C" void
d2v_k_layernorm_forward(float *out, float *mean, float *rstd,
    const float *in, const float *w, const float *b, int rows, int C,
    float eps, cudaStream_t st)
{
	if (rows <= 0 || C <= 0)
		return;
	layernorm_forward_kernel<<<row_grid(rows), 32 * LN_WARPS, 0, st>>>(out,
	    mean, rstd, in, w, b, rows, C, eps);
}

extern "C" size_t
d2v_k_layernorm_scratch(int rows, int C)
{
	int nchunk, rpc;

	/* 2 nchunk C doubles, and a float to reach an 8-byte boundary */
	d2v_k_row_chunks(rows, LN_MAXCHUNK, &nchunk, &rpc);
	return 4 * (size_t)nchunk * (size_t)(C > 0 ? C : 0) + 1;
}

extern "C" void
d2v_k_layernorm_backward(float *din, float *dw, float *db,
    const float *dout, const float *in, const float *mean, const float *rstd,
    const float *w, int rows, int C, float *scratch, cudaStream_t st)
{
	if (rows <= 0 || C <= 0)
		return;
	if (din != NULL)
		layernorm_din_kernel<<<row_grid(rows), 32 * LN_WARPS, 0, st>>>(
		    din, dout, in, mean, rstd, w, rows, C);
	if (dw != NULL || db != NULL) {
		int nchunk, rpc;
		dim3 grid, block(LN_COLS, LN_LANES);
		double *part = (double *)(((uintptr_t)scratch + 7) &
		    ~(uintptr_t)7);

		d2v_k_row_chunks(rows, LN_MAXCHUNK, &nchunk, &rpc);
		grid = dim3((C + LN_COLS - 1) / LN_COLS, nchunk);
		layernorm_dwdb_partial<<<grid, block, 0, st>>>(part, dout, in,
		    mean, rstd, rows, C, rpc, nchunk);
		layernorm_dwdb_final<<<(C + 255) / 256, 256, 0, st>>>(dw, db,
		    part, C, nchunk);
	}
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "layernorm"

/* The CPU reference, in double: out, mean, rstd as the forward. */
static void
ref_forward(double *out, double *mean, double *rstd, const float *in,
    const float *w, const float *b, int rows, int C, double eps)
{
	for (int i = 0; i < rows; i++) {
		const float *x = in + (size_t)i * C;
		double m = 0, v = 0, rs;

		for (int c = 0; c < C; c++)
			m += x[c];
		m /= C;
		for (int c = 0; c < C; c++)
			v += (x[c] - m) * (x[c] - m);
		v /= C;
		rs = 1.0 / sqrt(v + eps);
		for (int c = 0; c < C; c++) {
			double n = (x[c] - m) * rs;

			if (w != NULL)
				n *= w[c];
			if (b != NULL)
				n += b[c];
			out[(size_t)i * C + c] = n;
		}
		mean[i] = m;
		rstd[i] = rs;
	}
}

/* The CPU reference of the backward, in double, from the float mean and
 * rstd the kernel gets: din, dw, db hold their initial values and get
 * the gradients added. */
static void
ref_backward(double *din, double *dw, double *db, const float *dout,
    const float *in, const float *mean, const float *rstd, const float *w,
    int rows, int C)
{
	for (int i = 0; i < rows; i++) {
		const float *x = in + (size_t)i * C, *dy = dout + (size_t)i * C;
		double a = 0, bs = 0;

		for (int c = 0; c < C; c++) {
			double xh = (x[c] - (double)mean[i]) * rstd[i];
			double g = w != NULL ? (double)dy[c] * w[c] : dy[c];

			a += g;
			bs += g * xh;
		}
		a /= C;
		bs /= C;
		for (int c = 0; c < C; c++) {
			double xh = (x[c] - (double)mean[i]) * rstd[i];
			double g = w != NULL ? (double)dy[c] * w[c] : dy[c];

			din[(size_t)i * C + c] += rstd[i] * (g - a - xh * bs);
			dw[c] += dy[c] * xh;
			db[c] += dy[c];
		}
	}
}

static double *
to_double(const float *h, size_t n)
{
	double *d = (double *)lab_halloc(n * sizeof(double));

	for (size_t i = 0; i < n; i++)
		d[i] = h[i];
	return d;
}

/* the floor of a column sum's compare: 1e-3 of the largest */
static double
sum_floor(const double *ref, size_t n)
{
	return fmax(1e-3 * lab_max_abs(ref, n), 1e-30);
}

/* one shape, affine or not: the forward and the backward; failures */
static int
check(int rows, int C, int affine, lab_rng *rng, cudaStream_t st)
{
	size_t n = (size_t)rows * C;
	float eps = 1e-5f;
	float *x = (float *)lab_halloc(n * sizeof(float));
	float *dy = (float *)lab_halloc(n * sizeof(float));
	float *dx0 = (float *)lab_halloc(n * sizeof(float));
	float *w = (float *)lab_halloc(C * sizeof(float));
	float *b = (float *)lab_halloc(C * sizeof(float));
	float *dw0 = (float *)lab_halloc(C * sizeof(float));
	float *db0 = (float *)lab_halloc(C * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	float *mf = (float *)lab_halloc(rows * sizeof(float));
	float *rf = (float *)lab_halloc(rows * sizeof(float));
	double *ro = (double *)lab_halloc(n * sizeof(double));
	double *rm = (double *)lab_halloc(rows * sizeof(double));
	double *rr = (double *)lab_halloc(rows * sizeof(double));
	double *rdx, *rdw, *rdb;
	float *d_x, *d_out, *d_m, *d_r, *d_w, *d_b, *d_dy, *d_dx, *d_dw, *d_db;
	float *d_scr, *scr;
	const float *wp, *bp;
	char what[96];
	int fails = 0;

	/* rows with their own offsets, so the mean matters */
	for (int i = 0; i < rows; i++) {
		float off = lab_uniform(rng, -3, 3);

		for (int c = 0; c < C; c++)
			x[(size_t)i * C + c] = off + lab_uniform(rng, -2, 2);
	}
	lab_fill(dy, n, -1, 1, rng);
	lab_fill(dx0, n, -1, 1, rng);
	lab_fill(w, C, 0.5f, 1.5f, rng);
	lab_fill(b, C, -0.5f, 0.5f, rng);
	lab_fill(dw0, C, -1, 1, rng);
	lab_fill(db0, C, -1, 1, rng);
	wp = affine ? w : NULL;
	bp = affine ? b : NULL;

	d_x = lab_dup(x, n);
	d_out = (float *)lab_dalloc(n * sizeof(float));
	d_m = (float *)lab_dalloc(rows * sizeof(float));
	d_r = (float *)lab_dalloc(rows * sizeof(float));
	d_w = affine ? lab_dup(w, C) : NULL;
	d_b = affine ? lab_dup(b, C) : NULL;
	d_dy = lab_dup(dy, n);
	d_dx = lab_dup(dx0, n);
	d_dw = lab_dup(dw0, C);
	d_db = lab_dup(db0, C);
	/* a float more, so that odd row counts get a scratch at an odd float
	 * (not 8-byte aligned) */
	d_scr = (float *)lab_dalloc((d2v_k_layernorm_scratch(rows, C) + 1) *
	    sizeof(float));
	scr = d_scr + (rows & 1);

	/* forward */
	ref_forward(ro, rm, rr, x, wp, bp, rows, C, eps);
	d2v_k_layernorm_forward(d_out, d_m, d_r, d_x, d_w, d_b, rows, C, eps,
	    st);
	lab_sync(st);
	lab_get(got, d_out, n);
	lab_get(mf, d_m, rows);
	lab_get(rf, d_r, rows);
	snprintf(what, sizeof(what), "forward out  rows %d C %d %s", rows, C,
	    affine ? "w,b" : "NULL w,b");
	fails += lab_report(NAME, what, lab_max_rel_err(got, ro, n, 1e-2), 1e-4);
	snprintf(what, sizeof(what), "forward mean rows %d C %d", rows, C);
	fails += lab_report(NAME, what, lab_max_rel_err(mf, rm, rows, 1e-2),
	    1e-6);
	snprintf(what, sizeof(what), "forward rstd rows %d C %d", rows, C);
	fails += lab_report(NAME, what, lab_max_rel_err(rf, rr, rows, 1e-2),
	    1e-6);

	/* backward, from the float mean and rstd of the reference */
	for (int i = 0; i < rows; i++) {
		mf[i] = (float)rm[i];
		rf[i] = (float)rr[i];
	}
	LAB_CK(cudaMemcpy(d_m, mf, rows * sizeof(float),
	    cudaMemcpyHostToDevice));
	LAB_CK(cudaMemcpy(d_r, rf, rows * sizeof(float),
	    cudaMemcpyHostToDevice));
	rdx = to_double(dx0, n);
	rdw = to_double(dw0, C);
	rdb = to_double(db0, C);
	ref_backward(rdx, rdw, rdb, dy, x, mf, rf, wp, rows, C);
	d2v_k_layernorm_backward(d_dx, d_dw, d_db, d_dy, d_x, d_m, d_r, d_w,
	    rows, C, scr, st);
	lab_sync(st);
	lab_get(got, d_dx, n);
	snprintf(what, sizeof(what), "backward din rows %d C %d %s", rows, C,
	    affine ? "w" : "NULL w");
	fails += lab_report(NAME, what, lab_max_rel_err(got, rdx, n, 1e-2),
	    1e-4);
	/* column sums: below 1e-3 of the largest, absolute */
	lab_get(got, d_dw, C);
	snprintf(what, sizeof(what), "backward dw  rows %d C %d", rows, C);
	fails += lab_report(NAME, what, lab_max_rel_err(got, rdw, C,
	    sum_floor(rdw, C)), 1e-5);
	lab_get(got, d_db, C);
	snprintf(what, sizeof(what), "backward db  rows %d C %d", rows, C);
	fails += lab_report(NAME, what, lab_max_rel_err(got, rdb, C,
	    sum_floor(rdb, C)), 1e-5);

	/* NULL gradients are skipped: din alone, then db alone */
	LAB_CK(cudaMemcpy(d_dx, dx0, n * sizeof(float),
	    cudaMemcpyHostToDevice));
	LAB_CK(cudaMemcpy(d_db, db0, C * sizeof(float),
	    cudaMemcpyHostToDevice));
	d2v_k_layernorm_backward(d_dx, NULL, NULL, d_dy, d_x, d_m, d_r, d_w,
	    rows, C, scr, st);
	d2v_k_layernorm_backward(NULL, NULL, d_db, d_dy, d_x, d_m, d_r, d_w,
	    rows, C, scr, st);
	lab_sync(st);
	lab_get(got, d_dx, n);
	snprintf(what, sizeof(what), "backward din only rows %d C %d", rows, C);
	fails += lab_report(NAME, what, lab_max_rel_err(got, rdx, n, 1e-2),
	    1e-4);
	lab_get(got, d_db, C);
	snprintf(what, sizeof(what), "backward db only  rows %d C %d", rows, C);
	fails += lab_report(NAME, what, lab_max_rel_err(got, rdb, C,
	    sum_floor(rdb, C)), 1e-5);

	free(x), free(dy), free(dx0), free(w), free(b), free(dw0), free(db0);
	free(got), free(mf), free(rf), free(ro), free(rm), free(rr);
	free(rdx), free(rdw), free(rdb);
	cudaFree(d_x), cudaFree(d_out), cudaFree(d_m), cudaFree(d_r);
	cudaFree(d_w), cudaFree(d_b), cudaFree(d_dy), cudaFree(d_dx);
	cudaFree(d_dw), cudaFree(d_db), cudaFree(d_scr);
	return fails;
}

typedef struct bench_arg {
	float *out, *mean, *rstd, *in, *w, *b, *dout, *din, *dw, *db, *scr;
	int rows, C;
} bench_arg;

static void
bench_forward(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_layernorm_forward(a->out, a->mean, a->rstd, a->in, a->w, a->b,
	    a->rows, a->C, 1e-5f, st);
}

static void
bench_backward(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_layernorm_backward(a->din, a->dw, a->db, a->dout, a->in, a->mean,
	    a->rstd, a->w, a->rows, a->C, a->scr, st);
}

int
main(void)
{
	static const int rows[] = {1, 7, 197 * 8};
	static const int cs[] = {1, 31, 192, 384, 768};
	lab_rng rng = {42};
	cudaStream_t st;
	bench_arg a;
	size_t n;
	int fails = 0;
	double ms;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 5; j++)
			for (int affine = 0; affine < 2; affine++)
				fails += check(rows[i], cs[j], affine, &rng, st);
	/* more rows than LN_MAXCHUNK chunks of 64 */
	fails += check(20001, 33, 1, &rng, st);
	lab_verdict(NAME, fails);

	a.rows = 197 * 64;
	a.C = 768;
	n = (size_t)a.rows * a.C;
	a.in = (float *)lab_dalloc(n * sizeof(float));
	a.out = (float *)lab_dalloc(n * sizeof(float));
	a.dout = (float *)lab_dalloc(n * sizeof(float));
	a.din = (float *)lab_dalloc(n * sizeof(float));
	a.mean = (float *)lab_dalloc(a.rows * sizeof(float));
	a.rstd = (float *)lab_dalloc(a.rows * sizeof(float));
	a.w = (float *)lab_dalloc(a.C * sizeof(float));
	a.b = (float *)lab_dalloc(a.C * sizeof(float));
	a.dw = (float *)lab_dalloc(a.C * sizeof(float));
	a.db = (float *)lab_dalloc(a.C * sizeof(float));
	a.scr = (float *)lab_dalloc(d2v_k_layernorm_scratch(a.rows, a.C) *
	    sizeof(float));
	lab_dev_fill(a.in, n, -2, 2, 1);
	lab_dev_fill(a.dout, n, -1, 1, 2);
	lab_dev_fill(a.din, n, -1, 1, 3);
	lab_dev_fill(a.w, a.C, 0.5f, 1.5f, 4);
	lab_dev_fill(a.b, a.C, -0.5f, 0.5f, 5);
	lab_dev_fill(a.dw, a.C, -1, 1, 6);
	lab_dev_fill(a.db, a.C, -1, 1, 7);
	snprintf(what, sizeof(what), "forward rows %d C %d", a.rows, a.C);
	ms = lab_time_ms(bench_forward, &a, st);
	/* bytes: read in, write out (rows C floats each), read w and b,
	 * write mean and rstd */
	lab_bench(NAME, what, 4.0 * (2.0 * n + 2.0 * a.C + 2.0 * a.rows), ms);
	snprintf(what, sizeof(what), "backward rows %d C %d", a.rows, a.C);
	ms = lab_time_ms(bench_backward, &a, st);
	/* bytes: din kernel reads dout and in and reads and writes din (4 n
	 * floats); the dw/db kernels read dout and in again (2 n), plus the
	 * small vectors and the scratch (written and read once) */
	lab_bench(NAME, what, 4.0 * (6.0 * n + 4.0 * a.rows + 5.0 * a.C +
	    2.0 * d2v_k_layernorm_scratch(a.rows, a.C)), ms);
	return 0;
}
#endif
