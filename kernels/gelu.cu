/*
 * gelu.cu - exact (erf) GELU and its gradient, element-wise.
 *
 *     gelu(x)  = 0.5 x (1 + erf(x / sqrt 2))
 *     gelu'(x) = cdf(x) + x pdf(x),  cdf = 0.5 (1 + erf(x / sqrt 2)),
 *                pdf = exp(-x^2 / 2) / sqrt(2 pi)
 *
 * Grid-stride loops with size_t indices, 256 threads a block, at most
 * GELU_MAXGRID blocks.
 */
#include "kernels.h"

#define GELU_THREADS 256
#define GELU_MAXGRID 8192
#define GELU_SQRT1_2 0.70710678118654752440f	/* 1 / sqrt 2 */
#define GELU_INV_SQRT_2PI 0.39894228040143267794f	/* 1 / sqrt(2 pi) */

/* out (n) = gelu(in (n)); out may be in */
static __global__ void
gelu_forward_kernel(float *out, const float *in, size_t n)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride) {
		float x = in[i];

		out[i] = 0.5f * x * (1.0f + erff(x * GELU_SQRT1_2));
	}
}

/* din (n) += dout (n) gelu'(in (n)) */
static __global__ void
gelu_backward_kernel(float *din, const float *in, const float *dout,
    size_t n)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride) {
		float x = in[i];
		float cdf = 0.5f * (1.0f + erff(x * GELU_SQRT1_2));
		float pdf = expf(-0.5f * x * x) * GELU_INV_SQRT_2PI;

		din[i] += dout[i] * (cdf + x * pdf);
	}
}

static unsigned
grid_for(size_t n)
{
	size_t g = (n + GELU_THREADS - 1) / GELU_THREADS;

	return (unsigned)(g < GELU_MAXGRID ? g : GELU_MAXGRID);
}

extern "C" void
d2v_k_gelu_forward(float *out, const float *in, size_t n, cudaStream_t st)
{
	if (n == 0)
		return;
	gelu_forward_kernel<<<grid_for(n), GELU_THREADS, 0, st>>>(out, in, n);
}

extern "C" void
d2v_k_gelu_backward(float *din, const float *in, const float *dout,
    size_t n, cudaStream_t st)
{
	if (n == 0 || din == NULL)
		return;
	gelu_backward_kernel<<<grid_for(n), GELU_THREADS, 0, st>>>(din, in,
	    dout, n);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "gelu"

static double
ref_cdf(double x)
{
	return 0.5 * (1.0 + erf(x / sqrt(2.0)));
}

static double
ref_pdf(double x)
{
	return exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
}

/* forward (out separate and in place) and backward on n elements */
static int
check(size_t n, lab_rng *rng, cudaStream_t st)
{
	float *x = (float *)lab_halloc(n * sizeof(float));
	float *dy = (float *)lab_halloc(n * sizeof(float));
	float *dx = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	double *ref = (double *)lab_halloc(n * sizeof(double));
	float *d_x, *d_y, *d_dy, *d_dx;
	char what[96];
	int fails = 0;

	lab_fill(x, n, -6, 6, rng);
	lab_fill(dy, n, -1, 1, rng);
	lab_fill(dx, n, -1, 1, rng);
	d_x = lab_dup(x, n);
	d_y = (float *)lab_dalloc(n * sizeof(float));
	d_dy = lab_dup(dy, n);
	d_dx = lab_dup(dx, n);

	for (size_t i = 0; i < n; i++)
		ref[i] = x[i] * ref_cdf(x[i]);
	d2v_k_gelu_forward(d_y, d_x, n, st);
	lab_sync(st);
	lab_get(got, d_y, n);
	snprintf(what, sizeof(what), "forward n %zu", n);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-2),
	    1e-4);

	for (size_t i = 0; i < n; i++)
		ref[i] = dx[i] + (double)dy[i] * (ref_cdf(x[i]) +
		    x[i] * ref_pdf(x[i]));
	d2v_k_gelu_backward(d_dx, d_x, d_dy, n, st);
	lab_sync(st);
	lab_get(got, d_dx, n);
	snprintf(what, sizeof(what), "backward (+=) n %zu", n);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-2),
	    1e-4);

	/* in place: out = in */
	for (size_t i = 0; i < n; i++)
		ref[i] = x[i] * ref_cdf(x[i]);
	d2v_k_gelu_forward(d_x, d_x, n, st);
	lab_sync(st);
	lab_get(got, d_x, n);
	snprintf(what, sizeof(what), "forward in place n %zu", n);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-2),
	    1e-4);

	free(x), free(dy), free(dx), free(got), free(ref);
	cudaFree(d_x), cudaFree(d_y), cudaFree(d_dy), cudaFree(d_dx);
	return fails;
}

typedef struct bench_arg {
	float *in, *out, *dout, *din;
	size_t n;
} bench_arg;

static void
bench_forward(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_gelu_forward(a->out, a->in, a->n, st);
}

static void
bench_backward(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_gelu_backward(a->din, a->in, a->dout, a->n, st);
}

int
main(void)
{
	static const size_t ns[] = {1, 7, 31, 1000003, (size_t)197 * 8 * 3072};
	lab_rng rng = {7};
	cudaStream_t st;
	bench_arg a;
	int fails = 0;
	double ms;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	for (int i = 0; i < 5; i++)
		fails += check(ns[i], &rng, st);
	lab_verdict(NAME, fails);

	a.n = (size_t)1 << 26;
	a.in = (float *)lab_dalloc(a.n * sizeof(float));
	a.out = (float *)lab_dalloc(a.n * sizeof(float));
	a.dout = (float *)lab_dalloc(a.n * sizeof(float));
	a.din = (float *)lab_dalloc(a.n * sizeof(float));
	lab_dev_fill(a.in, a.n, -6, 6, 1);
	lab_dev_fill(a.dout, a.n, -1, 1, 2);
	lab_dev_fill(a.din, a.n, -1, 1, 3);
	snprintf(what, sizeof(what), "forward n %zu", a.n);
	ms = lab_time_ms(bench_forward, &a, st);
	/* bytes: read in, write out */
	lab_bench(NAME, what, 8.0 * a.n, ms);
	snprintf(what, sizeof(what), "backward n %zu", a.n);
	ms = lab_time_ms(bench_backward, &a, st);
	/* bytes: read in and dout, read and write din */
	lab_bench(NAME, what, 16.0 * a.n, ms);
	return 0;
}
#endif
