/*
 * ema.cu - the teacher's exponential moving average, t (n) = a t + b s.
 *
 * A grid-stride loop with size_t indices, 256 threads a block, at most
 * EMA_MAXGRID blocks.
 */
#include "kernels.h"

#define EMA_THREADS 256
#define EMA_MAXGRID 8192

/* t (n) = a t + b s (n) */
static __global__ void
ema_kernel(float *t, const float *s, size_t n, float a, float b)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride)
		t[i] = a * t[i] + b * s[i];
}

extern "C" void
d2v_k_ema(float *t, const float *s, size_t n, float a, float b,
    cudaStream_t st)
{
	size_t grid = (n + EMA_THREADS - 1) / EMA_THREADS;

	if (n == 0)
		return;
	if (grid > EMA_MAXGRID)
		grid = EMA_MAXGRID;
	ema_kernel<<<(unsigned)grid, EMA_THREADS, 0, st>>>(t, s, n, a, b);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "ema"

/* one update on n values; failures */
static int
check(size_t n, float tau, lab_rng *rng, cudaStream_t st)
{
	float a = tau, b = 1.0f - tau;
	float *t = (float *)lab_halloc(n * sizeof(float));
	float *s = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	double *ref = (double *)lab_halloc(n * sizeof(double));
	float *d_t, *d_s;
	char what[96];
	int fails;

	lab_fill(t, n, -1, 1, rng);
	lab_fill(s, n, -1, 1, rng);
	for (size_t i = 0; i < n; i++)
		ref[i] = (double)a * t[i] + (double)b * s[i];
	d_t = lab_dup(t, n);
	d_s = lab_dup(s, n);
	d2v_k_ema(d_t, d_s, n, a, b, st);
	lab_sync(st);
	lab_get(got, d_t, n);
	snprintf(what, sizeof(what), "n %zu a %g b %g", n, a, b);
	fails = lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-3), 1e-6);
	free(t), free(s), free(got), free(ref);
	cudaFree(d_t), cudaFree(d_s);
	return fails;
}

typedef struct bench_arg {
	float *t, *s;
	size_t n;
} bench_arg;

static void
bench_run(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_ema(a->t, a->s, a->n, 0.999f, 0.001f, st);
}

int
main(void)
{
	static const size_t ns[] = {1, 7, 31, 1000003, (size_t)197 * 8 * 3072};
	lab_rng rng = {17};
	cudaStream_t st;
	bench_arg a;
	int fails = 0;
	double ms;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	for (int i = 0; i < 5; i++) {
		fails += check(ns[i], 0.999f, &rng, st);
		fails += check(ns[i], 0.5f, &rng, st);
	}
	lab_verdict(NAME, fails);

	a.n = (size_t)1 << 26;
	a.t = (float *)lab_dalloc(a.n * sizeof(float));
	a.s = (float *)lab_dalloc(a.n * sizeof(float));
	lab_dev_fill(a.t, a.n, -1, 1, 1);
	lab_dev_fill(a.s, a.n, -1, 1, 2);
	snprintf(what, sizeof(what), "n %zu", a.n);
	ms = lab_time_ms(bench_run, &a, st);
	/* bytes: read t and s, write t */
	lab_bench(NAME, what, 12.0 * a.n, ms);
	return 0;
}
#endif
