/*
 * lab.h - helpers shared by the kernel labs, the main() each kernels/NAME.cu
 * has under -DD2V_KERNEL_LAB: the GPU check, random fills (host and
 * device), the max-relative-error compare, PASS/FAIL lines and cudaEvent
 * timing.  Lab code only: the launchers never include it.
 */
#ifndef D2V_LAB_H
#define D2V_LAB_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

/* runs of a benchmark after the warm-up ones; the median is reported */
#define LAB_WARMUP 3
#define LAB_RUNS 21

#define LAB_CK(call) lab_ck((call), #call, __FILE__, __LINE__)

static inline void
lab_ck(cudaError_t e, const char *what, const char *file, int line)
{
	if (e != cudaSuccess) {
		fprintf(stderr, "%s:%d: %s: %s\n", file, line, what,
		    cudaGetErrorString(e));
		exit(1);
	}
}

/* Exit 1 with "name: needs a CUDA GPU: why" unless device 0 can be used;
 * otherwise print which device the lab runs on. */
static inline void
lab_need_gpu(const char *name)
{
	struct cudaDeviceProp pr;
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);

	if (e == cudaSuccess && n < 1)
		e = cudaErrorNoDevice;
	if (e == cudaSuccess)
		e = cudaSetDevice(0);
	if (e == cudaSuccess)
		e = cudaFree(0);	/* creates the context */
	if (e == cudaSuccess)
		e = cudaGetDeviceProperties(&pr, 0);
	if (e != cudaSuccess) {
		fprintf(stderr, "%s: needs a CUDA GPU: %s\n", name,
		    cudaGetErrorString(e));
		exit(1);
	}
	printf("%s: %s (sm_%d%d, %d SMs)\n", name, pr.name, pr.major, pr.minor,
	    pr.multiProcessorCount);
}

/* Kernel errors and completion of everything queued on st. */
static inline void
lab_sync(cudaStream_t st)
{
	LAB_CK(cudaGetLastError());
	LAB_CK(cudaStreamSynchronize(st));
}

/* ---- host memory and random numbers ---- */

static inline void *
lab_halloc(size_t bytes)
{
	void *p = malloc(bytes > 0 ? bytes : 1);

	if (p == NULL) {
		fprintf(stderr, "lab: out of host memory (%zu bytes)\n", bytes);
		exit(1);
	}
	return p;
}

/* splitmix64 */
typedef struct lab_rng {
	uint64_t s;
} lab_rng;

static inline uint64_t
lab_next(lab_rng *r)
{
	uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* uniform in [lo, hi) */
static inline float
lab_uniform(lab_rng *r, float lo, float hi)
{
	double u = (double)(lab_next(r) >> 40) * (1.0 / 16777216.0);

	return (float)(lo + (hi - lo) * u);
}

/* h (n) uniform in [lo, hi) */
static inline void
lab_fill(float *h, size_t n, float lo, float hi, lab_rng *r)
{
	for (size_t i = 0; i < n; i++)
		h[i] = lab_uniform(r, lo, hi);
}

/* ---- device memory ---- */

static inline void *
lab_dalloc(size_t bytes)
{
	void *p = NULL;

	LAB_CK(cudaMalloc(&p, bytes > 0 ? bytes : 1));
	return p;
}

/* a device copy of h (n floats) */
static inline float *
lab_dup(const float *h, size_t n)
{
	float *d = (float *)lab_dalloc(n * sizeof(float));

	if (n > 0)
		LAB_CK(cudaMemcpy(d, h, n * sizeof(float),
		    cudaMemcpyHostToDevice));
	return d;
}

/* h (n) = d (n), after everything queued so far */
static inline void
lab_get(float *h, const float *d, size_t n)
{
	LAB_CK(cudaDeviceSynchronize());
	if (n > 0)
		LAB_CK(cudaMemcpy(h, d, n * sizeof(float),
		    cudaMemcpyDeviceToHost));
}

/* d (n) uniform in [lo, hi), from a hash of the index: for benchmarks,
 * whose buffers are too big to fill on the host quickly. */
static __global__ void
lab_fill_kernel(float *d, size_t n, float lo, float hi, uint64_t seed)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride) {
		uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;

		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
		z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
		z ^= z >> 31;
		d[i] = lo + (hi - lo) * (float)(z >> 40) * (1.0f / 16777216.0f);
	}
}

static inline void
lab_dev_fill(float *d, size_t n, float lo, float hi, uint64_t seed)
{
	if (n == 0)
		return;
	lab_fill_kernel<<<4096, 256>>>(d, n, lo, hi, seed);
	LAB_CK(cudaGetLastError());
	LAB_CK(cudaDeviceSynchronize());
}

/* ---- comparing ---- */

/* max over i of |got - ref| / max(|ref|, floor): relative where |ref| >=
 * floor, absolute (scaled by 1/floor) below it.  NaN anywhere gives NaN,
 * which fails every tolerance. */
static inline double
lab_max_rel_err(const float *got, const double *ref, size_t n, double floor)
{
	double worst = 0;

	for (size_t i = 0; i < n; i++) {
		double e = fabs((double)got[i] - ref[i]) / fmax(fabs(ref[i]), floor);

		if (!(e <= worst))
			worst = e;
	}
	return worst;
}

/* max |ref| (0 for n = 0) */
static inline double
lab_max_abs(const double *ref, size_t n)
{
	double m = 0;

	for (size_t i = 0; i < n; i++)
		m = fmax(m, fabs(ref[i]));
	return m;
}

/* A check's PASS/FAIL line; 1 when it failed. */
static inline int
lab_report(const char *name, const char *what, double err, double tol)
{
	int ok = err <= tol;

	printf("%s: %-44s max rel err %.3e (tol %.0e) %s\n", name, what, err,
	    tol, ok ? "PASS" : "FAIL");
	return !ok;
}

/* After the checks: exit 1 when any failed; exit 0 when they passed and
 * D2V_LAB_NOBENCH is set in the environment (checks only, no benchmark). */
static inline void
lab_verdict(const char *name, int fails)
{
	if (fails > 0) {
		printf("%s: %d check(s) FAILED\n", name, fails);
		exit(1);
	}
	printf("%s: all checks PASS\n", name);
	if (getenv("D2V_LAB_NOBENCH") != NULL)
		exit(0);
}

/* ---- timing ---- */

typedef void (*lab_fn)(void *arg, cudaStream_t st);

/* Median milliseconds of LAB_RUNS runs of fn on st, each between two
 * cudaEvents, after LAB_WARMUP runs. */
static inline double
lab_time_ms(lab_fn fn, void *arg, cudaStream_t st)
{
	cudaEvent_t a, b;
	float ms[LAB_RUNS];

	LAB_CK(cudaEventCreate(&a));
	LAB_CK(cudaEventCreate(&b));
	for (int k = 0; k < LAB_WARMUP; k++)
		fn(arg, st);
	lab_sync(st);
	for (int k = 0; k < LAB_RUNS; k++) {
		LAB_CK(cudaEventRecord(a, st));
		fn(arg, st);
		LAB_CK(cudaEventRecord(b, st));
		LAB_CK(cudaEventSynchronize(b));
		LAB_CK(cudaGetLastError());
		LAB_CK(cudaEventElapsedTime(&ms[k], a, b));
	}
	LAB_CK(cudaEventDestroy(a));
	LAB_CK(cudaEventDestroy(b));
	/* insertion sort, then the middle one */
	for (int i = 1; i < LAB_RUNS; i++) {
		float x = ms[i];
		int j = i - 1;

		for (; j >= 0 && ms[j] > x; j--)
			ms[j + 1] = ms[j];
		ms[j + 1] = x;
	}
	return ms[LAB_RUNS / 2];
}

/* n floats of got whose bits differ from ref's */
static inline size_t
lab_bits_differ(const float *got, const float *ref, size_t n)
{
	size_t bad = 0;

	for (size_t i = 0; i < n; i++)
		bad += memcmp(&got[i], &ref[i], sizeof(float)) != 0;
	return bad;
}

/* one bit-exact check's PASS/FAIL line; 1 when it failed */
static inline int
lab_report_bits(const char *name, const char *what, size_t bad)
{
	printf("%s: %-44s %zu bits differ (tol 0) %s\n", name, what, bad,
	    bad == 0 ? "PASS" : "FAIL");
	return bad != 0;
}

/* A benchmark's line: time and bytes / time. */
static inline void
lab_bench(const char *name, const char *what, double bytes, double ms)
{
	printf("%s: bench %-36s %10.1f us %8.1f GB/s\n", name, what, ms * 1e3,
	    bytes / (ms * 1e-3) / 1e9);
}

#endif
