/*
 * elementwise.cu - add, mul, mul_to, scale, bias_add, bias_grad,
 * add_bcast, to_bf16.
 *
 * The element-wise ones: grid-stride loops with size_t indices, 256
 * threads a block, at most EW_MAXGRID blocks.  bias_add and add_bcast
 * keep their column with an increment instead of a 64-bit modulo per
 * element.
 *
 * bias_grad: column sums over the rows of dout (M,N), deterministic in two
 * kernels.  The rows are cut into nchunk chunks of rpc rows (a function
 * of M only); a block of 32 x 8 threads sums 32 columns of one chunk in
 * double (8 row lanes, then the 8 partials in order) into scratch (nchunk,
 * N) as doubles (from the first 8-byte boundary of the float scratch), and
 * a second kernel adds each column's nchunk partials in order, in double,
 * to db, rounded once.
 */
#include <stdint.h>

#include "chunks.h"
#include "kernels.h"

#define EW_THREADS 256
#define EW_MAXGRID 8192
#define BG_COLS 32		/* columns per block of the bias_grad partials */
#define BG_LANES 8		/* row lanes per block of the partials */
#define BG_MAXCHUNK 256		/* most row chunks */

/* a (n) += b (n) */
static __global__ void
add_kernel(float *a, const float *b, size_t n)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride)
		a[i] += b[i];
}

/* a (n) *= b (n) */
static __global__ void
mul_kernel(float *a, const float *b, size_t n)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride)
		a[i] *= b[i];
}

/* out (n) = a (n) * b (n) */
static __global__ void
mul_to_kernel(float *__restrict__ out, const float *a, const float *b,
    size_t n)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride)
		out[i] = a[i] * b[i];
}

/* x (n) *= c */
static __global__ void
scale_kernel(float *x, size_t n, float c)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride)
		x[i] *= c;
}

/* out (M,N) += b (N) on every row; n = M N */
static __global__ void
bias_add_kernel(float *out, const float *b, size_t n, int N)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	unsigned c = (unsigned)(i % N), step = (unsigned)(stride % N);

	for (; i < n; i += stride) {
		out[i] += b[c];
		c += step;	/* < 2N < 2^32 */
		if (c >= (unsigned)N)
			c -= N;
	}
}

/* a (B,n) += b (n) on every row; total = B n */
static __global__ void
add_bcast_kernel(float *a, const float *b, size_t total, size_t n)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	size_t c = i % n, step = stride % n;

	for (; i < total; i += stride) {
		a[i] += b[c];
		c += step;	/* < 2n */
		if (c >= n)
			c -= n;
	}
}

/* part (nchunk, N) doubles: part[k][c] = sum of dout (M,N) over the rows
 * [k rpc, k rpc + rpc) of column c.  Grid (ceil(N/32), nchunk), block
 * (32, 8). */
static __global__ void
bias_grad_partial(double *part, const float *dout, int M, int N, int rpc)
{
	__shared__ double sh[BG_LANES][BG_COLS];
	int tx = threadIdx.x, ty = threadIdx.y;
	int c = blockIdx.x * BG_COLS + tx;
	int r0 = blockIdx.y * rpc, r1 = min(r0 + rpc, M);
	double acc = 0;

	if (c < N)
		for (int r = r0 + ty; r < r1; r += BG_LANES)
			acc += dout[(size_t)r * N + c];
	sh[ty][tx] = acc;
	__syncthreads();
	if (ty == 0 && c < N) {
		double s = 0;

		for (int k = 0; k < BG_LANES; k++)
			s += sh[k][tx];
		part[(size_t)blockIdx.y * N + c] = s;
	}
}

/* db (N) += the sums of part (nchunk, N) over the chunks, in order, in
 * double, rounded once */
static __global__ void
bias_grad_final(float *db, const double *part, int N, int nchunk)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	double s = 0;

	if (c >= N)
		return;
	for (int k = 0; k < nchunk; k++)
		s += part[(size_t)k * N + c];
	db[c] = (float)(db[c] + s);
}

/* out (n) = in (n) rounded to bf16, nearest even */
static __global__ void
to_bf16_kernel(__nv_bfloat16 *out, const float *in, size_t n)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride)
		out[i] = __float2bfloat16_rn(in[i]);
}

static unsigned
grid_for(size_t n)
{
	size_t g = (n + EW_THREADS - 1) / EW_THREADS;

	return (unsigned)(g < EW_MAXGRID ? g : EW_MAXGRID);
}

extern "C" void
d2v_k_add(float *a, const float *b, size_t n, cudaStream_t st)
{
	if (n > 0)
		add_kernel<<<grid_for(n), EW_THREADS, 0, st>>>(a, b, n);
}

extern "C" void
d2v_k_mul(float *a, const float *b, size_t n, cudaStream_t st)
{
	if (n > 0)
		mul_kernel<<<grid_for(n), EW_THREADS, 0, st>>>(a, b, n);
}

extern "C" void
d2v_k_mul_to(float *out, const float *a, const float *b, size_t n,
    cudaStream_t st)
{
	if (n > 0)
		mul_to_kernel<<<grid_for(n), EW_THREADS, 0, st>>>(out, a, b, n);
}

extern "C" void
d2v_k_scale(float *x, size_t n, float c, cudaStream_t st)
{
	if (n > 0)
		scale_kernel<<<grid_for(n), EW_THREADS, 0, st>>>(x, n, c);
}

extern "C" void
d2v_k_bias_add(float *out, const float *b, int M, int N, cudaStream_t st)
{
	size_t n;

	if (M <= 0 || N <= 0 || b == NULL)
		return;
	n = (size_t)M * N;
	bias_add_kernel<<<grid_for(n), EW_THREADS, 0, st>>>(out, b, n, N);
}

extern "C" size_t
d2v_k_bias_grad_scratch(int M, int N)
{
	int nchunk, rpc;

	/* nchunk N doubles, and a float to reach an 8-byte boundary */
	d2v_k_row_chunks(M, BG_MAXCHUNK, &nchunk, &rpc);
	return 2 * (size_t)nchunk * (size_t)(N > 0 ? N : 0) + 1;
}

extern "C" void
d2v_k_bias_grad(float *db, const float *dout, int M, int N, float *scratch,
    cudaStream_t st)
{
	int nchunk, rpc;
	dim3 grid, block(BG_COLS, BG_LANES);
	double *part = (double *)(((uintptr_t)scratch + 7) & ~(uintptr_t)7);

	if (M <= 0 || N <= 0 || db == NULL)
		return;
	d2v_k_row_chunks(M, BG_MAXCHUNK, &nchunk, &rpc);
	grid = dim3((N + BG_COLS - 1) / BG_COLS, nchunk);
	bias_grad_partial<<<grid, block, 0, st>>>(part, dout, M, N, rpc);
	bias_grad_final<<<(N + 255) / 256, 256, 0, st>>>(db, part, N, nchunk);
}

extern "C" void
d2v_k_add_bcast(float *a, const float *b, int B, size_t n, cudaStream_t st)
{
	size_t total;

	if (B <= 0 || n == 0)
		return;
	total = (size_t)B * n;
	add_bcast_kernel<<<grid_for(total), EW_THREADS, 0, st>>>(a, b, total,
	    n);
}

extern "C" void
d2v_k_to_bf16(__nv_bfloat16 *out, const float *in, size_t n,
    cudaStream_t st)
{
	if (n > 0)
		to_bf16_kernel<<<grid_for(n), EW_THREADS, 0, st>>>(out, in, n);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "elementwise"

/* The reference bf16 rounding, from the bits: nearest, ties to even; a
 * NaN is only required to stay a NaN (checked apart). */
static uint16_t
ref_bf16(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

static int
bf16_isnan(uint16_t h)
{
	return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) != 0;
}

/* add, mul, mul_to, scale on n elements; failures */
static int
check_ew(size_t n, lab_rng *rng, cudaStream_t st)
{
	float *a = (float *)lab_halloc(n * sizeof(float));
	float *b = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	double *ref = (double *)lab_halloc(n * sizeof(double));
	float *d_a, *d_b, *d_o;
	float c = 0.3f;
	char what[96];
	int fails = 0;

	lab_fill(a, n, -2, 2, rng);
	lab_fill(b, n, -2, 2, rng);
	d_a = lab_dup(a, n);
	d_b = lab_dup(b, n);
	d_o = (float *)lab_dalloc(n * sizeof(float));

	/* each is one correctly rounded float operation: within 2^-24 of
	 * the exact result, relative (floor 1e-30, i.e. none) */
	for (size_t i = 0; i < n; i++)
		ref[i] = (double)a[i] + b[i];
	d2v_k_add(d_a, d_b, n, st);
	lab_sync(st);
	lab_get(got, d_a, n);
	snprintf(what, sizeof(what), "add n %zu", n);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-30),
	    1e-7);

	LAB_CK(cudaMemcpy(d_a, a, n * sizeof(float), cudaMemcpyHostToDevice));
	for (size_t i = 0; i < n; i++)
		ref[i] = (double)a[i] * b[i];
	d2v_k_mul(d_a, d_b, n, st);
	lab_sync(st);
	lab_get(got, d_a, n);
	snprintf(what, sizeof(what), "mul n %zu", n);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-30),
	    1e-7);

	LAB_CK(cudaMemcpy(d_a, a, n * sizeof(float), cudaMemcpyHostToDevice));
	d2v_k_mul_to(d_o, d_a, d_b, n, st);
	lab_sync(st);
	lab_get(got, d_o, n);
	snprintf(what, sizeof(what), "mul_to n %zu", n);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-30),
	    1e-7);

	for (size_t i = 0; i < n; i++)
		ref[i] = (double)a[i] * c;
	d2v_k_scale(d_a, n, c, st);
	lab_sync(st);
	lab_get(got, d_a, n);
	snprintf(what, sizeof(what), "scale n %zu", n);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-30),
	    1e-7);

	free(a), free(b), free(got), free(ref);
	cudaFree(d_a), cudaFree(d_b), cudaFree(d_o);
	return fails;
}

/* bias_add and bias_grad on (M,N); failures */
static int
check_bias(int M, int N, lab_rng *rng, cudaStream_t st)
{
	size_t n = (size_t)M * N;
	float *o = (float *)lab_halloc(n * sizeof(float));
	float *b = (float *)lab_halloc(N * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	double *ref = (double *)lab_halloc(n * sizeof(double));
	float *d_o, *d_b, *d_scr;
	char what[96];
	int fails = 0;

	lab_fill(o, n, -1, 1, rng);
	lab_fill(b, N, -1, 1, rng);
	d_o = lab_dup(o, n);
	d_b = lab_dup(b, N);
	/* a float more, so that odd M get a scratch at an odd float (not
	 * 8-byte aligned) */
	d_scr = (float *)lab_dalloc((d2v_k_bias_grad_scratch(M, N) + 1) *
	    sizeof(float));

	for (size_t i = 0; i < n; i++)
		ref[i] = (double)o[i] + b[i % N];
	d2v_k_bias_add(d_o, d_b, M, N, st);
	lab_sync(st);
	lab_get(got, d_o, n);
	snprintf(what, sizeof(what), "bias_add M %d N %d", M, N);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-30),
	    1e-7);

	/* db starts as b: db += column sums of o; relative to the largest
	 * sum below 1e-3 of it */
	for (int c = 0; c < N; c++)
		ref[c] = b[c];
	for (int r = 0; r < M; r++)
		for (int c = 0; c < N; c++)
			ref[c] += o[(size_t)r * N + c];
	LAB_CK(cudaMemcpy(d_o, o, n * sizeof(float), cudaMemcpyHostToDevice));
	d2v_k_bias_grad(d_b, d_o, M, N, d_scr + (M & 1), st);
	lab_sync(st);
	lab_get(got, d_b, N);
	snprintf(what, sizeof(what), "bias_grad (+=) M %d N %d", M, N);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, N,
	    fmax(1e-3 * lab_max_abs(ref, N), 1e-30)), 1e-6);

	free(o), free(b), free(got), free(ref);
	cudaFree(d_o), cudaFree(d_b), cudaFree(d_scr);
	return fails;
}

/* add_bcast on (B,n); failures */
static int
check_bcast(int B, size_t n, lab_rng *rng, cudaStream_t st)
{
	size_t total = (size_t)B * n;
	float *a = (float *)lab_halloc(total * sizeof(float));
	float *b = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(total * sizeof(float));
	double *ref = (double *)lab_halloc(total * sizeof(double));
	float *d_a, *d_b;
	char what[96];
	int fails;

	lab_fill(a, total, -1, 1, rng);
	lab_fill(b, n, -1, 1, rng);
	d_a = lab_dup(a, total);
	d_b = lab_dup(b, n);
	/* one rounding each, as add */
	for (size_t i = 0; i < total; i++)
		ref[i] = (double)a[i] + b[i % n];
	d2v_k_add_bcast(d_a, d_b, B, n, st);
	lab_sync(st);
	lab_get(got, d_a, total);
	snprintf(what, sizeof(what), "add_bcast B %d n %zu", B, n);
	fails = lab_report(NAME, what, lab_max_rel_err(got, ref, total, 1e-30),
	    1e-7);
	free(a), free(b), free(got), free(ref);
	cudaFree(d_a), cudaFree(d_b);
	return fails;
}

/* to_bf16 bit for bit on n values over the whole float range, with the
 * special values and ties first; failures */
static int
check_bf16(size_t n, lab_rng *rng, cudaStream_t st)
{
	static const uint32_t special[] = {
		0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,
		0x7fc00000u, 0xffc00001u, 0x7f800001u,	/* NaNs */
		0x7f7fffffu, 0xff7fffffu,	/* max: rounds to inf */
		0x3f808000u, 0x3f818000u,	/* ties, even below, odd below */
		0x3f807fffu, 0x3f808001u,	/* just off the tie */
		0x00000001u, 0x00008000u, 0x00018000u, 0x807fffffu  /* subnormal */
	};
	size_t ns = sizeof(special) / sizeof(special[0]);
	float *x = (float *)lab_halloc(n * sizeof(float));
	uint16_t *got = (uint16_t *)lab_halloc(n * sizeof(uint16_t));
	__nv_bfloat16 *d_out;
	float *d_x;
	size_t bad = 0;
	char what[96];

	for (size_t i = 0; i < n; i++) {
		uint32_t u = i < ns ? special[i] : (uint32_t)lab_next(rng);

		memcpy(&x[i], &u, 4);
	}
	d_x = lab_dup(x, n);
	d_out = (__nv_bfloat16 *)lab_dalloc(n * sizeof(__nv_bfloat16));
	d2v_k_to_bf16(d_out, d_x, n, st);
	lab_sync(st);
	LAB_CK(cudaMemcpy(got, d_out, n * sizeof(uint16_t),
	    cudaMemcpyDeviceToHost));
	for (size_t i = 0; i < n; i++) {
		int ok = isnan(x[i]) ? bf16_isnan(got[i]) : got[i] == ref_bf16(x[i]);

		if (!ok && bad++ < 5) {
			uint32_t u;

			memcpy(&u, &x[i], 4);
			printf("%s: to_bf16 of 0x%08x gave 0x%04x, want 0x%04x\n",
			    NAME, u, got[i], ref_bf16(x[i]));
		}
	}
	snprintf(what, sizeof(what), "to_bf16 n %zu (bit exact)", n);
	printf("%s: %-44s %zu mismatches (tol 0) %s\n", NAME, what, bad,
	    bad == 0 ? "PASS" : "FAIL");
	free(x), free(got);
	cudaFree(d_x), cudaFree(d_out);
	return bad != 0;
}

/* With D2V_LAB_BIG set: scale over 2^31 + 33 floats (8.6 GB), the end
 * checked, for the size_t indexing; failures */
static int
check_big(cudaStream_t st)
{
	size_t n = ((size_t)1 << 31) + 33;
	float *d, tail[64];
	int bad = 0;

	d = (float *)lab_dalloc(n * sizeof(float));
	LAB_CK(cudaMemset(d, 0x3f, n * sizeof(float)));	/* 0x3f3f3f3f */
	d2v_k_scale(d, n, 2.0f, st);
	lab_sync(st);
	LAB_CK(cudaMemcpy(tail, d + n - 64, sizeof(tail),
	    cudaMemcpyDeviceToHost));
	for (int i = 0; i < 64; i++) {
		uint32_t u = 0x3f3f3f3fu;
		float want;

		memcpy(&want, &u, 4);
		bad += tail[i] != 2.0f * want;
	}
	printf("%s: %-44s %d wrong in the last 64 (tol 0) %s\n", NAME,
	    "scale n 2^31+33", bad, bad == 0 ? "PASS" : "FAIL");
	cudaFree(d);
	return bad != 0;
}

typedef struct bench_arg {
	float *a, *b, *o, *bias, *scr;
	__nv_bfloat16 *h;
	size_t n;
	int M, N;
} bench_arg;

static void
bench_add(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_add(a->a, a->b, a->n, st);
}

static void
bench_mul_to(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_mul_to(a->o, a->a, a->b, a->n, st);
}

static void
bench_scale(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_scale(a->a, a->n, 0.999f, st);
}

static void
bench_bias_add(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_bias_add(a->a, a->bias, a->M, a->N, st);
}

static void
bench_bias_grad(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_bias_grad(a->bias, a->a, a->M, a->N, a->scr, st);
}

static void
bench_add_bcast(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_add_bcast(a->a, a->b, a->M, (size_t)a->N, st);
}

static void
bench_bf16(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_to_bf16(a->h, a->a, a->n, st);
}

int
main(void)
{
	static const size_t ns[] = {1, 7, 31, 1000003, (size_t)197 * 8 * 3072};
	static const int shapes[][2] = {
		{1, 1}, {7, 31}, {197 * 8, 192}, {197 * 8, 768}, {3, 100003},
		{100001, 7}
	};
	lab_rng rng = {3};
	cudaStream_t st;
	bench_arg a;
	int fails = 0;
	double ms;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	for (int i = 0; i < 5; i++)
		fails += check_ew(ns[i], &rng, st);
	for (int i = 0; i < 6; i++)
		fails += check_bias(shapes[i][0], shapes[i][1], &rng, st);
	for (int i = 0; i < 6; i++)
		fails += check_bcast(shapes[i][0], (size_t)shapes[i][1], &rng,
		    st);
	fails += check_bcast(8, (size_t)197 * 768, &rng, st);
	fails += check_bf16(17, &rng, st);
	fails += check_bf16(1000003, &rng, st);
	if (getenv("D2V_LAB_BIG") != NULL)
		fails += check_big(st);
	lab_verdict(NAME, fails);

	a.n = (size_t)1 << 26;
	a.M = 65536;
	a.N = 1024;
	a.a = (float *)lab_dalloc(a.n * sizeof(float));
	a.b = (float *)lab_dalloc(a.n * sizeof(float));
	a.o = (float *)lab_dalloc(a.n * sizeof(float));
	a.h = (__nv_bfloat16 *)lab_dalloc(a.n * sizeof(__nv_bfloat16));
	a.bias = (float *)lab_dalloc(a.N * sizeof(float));
	a.scr = (float *)lab_dalloc(d2v_k_bias_grad_scratch(a.M, a.N) *
	    sizeof(float));
	lab_dev_fill(a.a, a.n, -1, 1, 1);
	lab_dev_fill(a.b, a.n, -1e-6f, 1e-6f, 2);
	lab_dev_fill(a.bias, a.N, -1, 1, 3);

	snprintf(what, sizeof(what), "add n %zu", a.n);
	ms = lab_time_ms(bench_add, &a, st);
	/* bytes: read a and b, write a */
	lab_bench(NAME, what, 12.0 * a.n, ms);
	snprintf(what, sizeof(what), "mul_to n %zu", a.n);
	ms = lab_time_ms(bench_mul_to, &a, st);
	/* bytes: read a and b, write out (mul the same) */
	lab_bench(NAME, what, 12.0 * a.n, ms);
	snprintf(what, sizeof(what), "scale n %zu", a.n);
	ms = lab_time_ms(bench_scale, &a, st);
	/* bytes: read and write x */
	lab_bench(NAME, what, 8.0 * a.n, ms);
	snprintf(what, sizeof(what), "bias_add M %d N %d", a.M, a.N);
	ms = lab_time_ms(bench_bias_add, &a, st);
	/* bytes: read and write out (M N floats); b is cached */
	lab_bench(NAME, what, 8.0 * a.M * a.N, ms);
	snprintf(what, sizeof(what), "bias_grad M %d N %d", a.M, a.N);
	ms = lab_time_ms(bench_bias_grad, &a, st);
	/* bytes: read dout (M N floats); the scratch is small */
	lab_bench(NAME, what, 4.0 * a.M * a.N, ms);
	snprintf(what, sizeof(what), "add_bcast B %d n %d", a.M, a.N);
	ms = lab_time_ms(bench_add_bcast, &a, st);
	/* bytes: read and write a (B n floats); b is cached */
	lab_bench(NAME, what, 8.0 * a.M * a.N, ms);
	snprintf(what, sizeof(what), "to_bf16 n %zu", a.n);
	ms = lab_time_ms(bench_bf16, &a, st);
	/* bytes: read 4, write 2 a value */
	lab_bench(NAME, what, 6.0 * a.n, ms);
	return 0;
}
#endif
