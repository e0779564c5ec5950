/*
 * sgemm-peak - the fp32 matrix-product peak of this machine through d2v's
 * GEMM engine (gemm.h: oneDNN's sgemm, or OpenBLAS without oneDNN) and
 * through OpenBLAS with the kernel it picks, and oneDNN's bf16 matmul peak (bf16 operands,
 * fp32 result, through d2v's --precision bf16 linear layer) where oneDNN
 * runs it on this CPU: the best of a few n x n x n products each.
 *
 * Usage: sgemm-peak [N] [REPEATS]
 * Prints one JSON line per engine: impl, engine (with its kernel or
 * instruction set), cpu, n, threads, best_ms, gflops; for
 * a bf16 matmul oneDNN cannot run on this CPU, gflops null and why.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cblas.h>
#include <omp.h>

#include "backend/gemm.h"
#include "backend/ops.h"

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* oneDNN's bf16 matmul through d2v's bf16 linear layer (its operands'
 * rounding included, O(n^2) of the n^3): prints its JSON line, or why it
 * cannot run here */
static void
bf16_peak(int n, int reps, const float *a, const float *b, float *c)
{
	const char *why;
	const d2v_ops *o = d2v_backend_cpu_bf16(&why);
	double best = 1e30;

	if (!d2v_bf16_onednn()) {
		printf("{\"impl\":\"onednn-bf16\",\"n\":%d,\"threads\":%d,"
		    "\"gflops\":null,\"why\":\"%s\"}\n", n,
		    omp_get_max_threads(), why);
		return;
	}
	for (int r = 0; r <= reps; r++) {
		double t = now();

		o->matmul_forward(c, a, b, NULL, n, n, n);
		t = now() - t;
		if (r > 0 && t < best)
			best = t;
	}
	printf("{\"impl\":\"onednn-bf16\",\"n\":%d,\"threads\":%d,"
	    "\"best_ms\":%.2f,\"gflops\":%.1f}\n", n, omp_get_max_threads(),
	    best * 1e3, 2.0 * n * (double)n * n / best * 1e-9);
}

int
main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 2048, reps = argc > 2 ? atoi(argv[2]) : 5;
	size_t nn = (size_t)n * n;
	float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b);
	float *c = malloc(nn * sizeof *c);
	double best = 1e30;

	if (n < 1 || reps < 1 || !a || !b || !c) {
		fprintf(stderr, "sgemm-peak: bad size or out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < nn; i++) {
		a[i] = (float)(i % 7) * 0.1f;
		b[i] = (float)(i % 5) * 0.1f;
	}
	/* d2v's engine (gemm.h), then OpenBLAS itself with the kernel it
	 * chose for this CPU */
	for (int e = 0; e < 2; e++) {
		char ob[96];

		best = 1e30;
		for (int r = 0; r <= reps; r++) {
			double t = now();

			if (e == 0)
				d2v_sgemm('N', 'N', n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
			else
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n,
				    n, n, 1.0f, a, n, b, n, 0.0f, c, n);
			t = now() - t;
			if (r > 0 && t < best) /* the first is a warm-up */
				best = t;
		}
		snprintf(ob, sizeof ob, "OpenBLAS (%s)", openblas_get_corename());
		printf("{\"impl\":\"%s\",\"engine\":\"%s\",\"cpu\":\"%s\","
		    "\"n\":%d,\"threads\":%d,\"best_ms\":%.2f,\"gflops\":%.1f}\n",
		    e == 0 ? "sgemm" : "openblas", e == 0 ? d2v_gemm_engine() : ob,
		    d2v_cpu_name(), n, omp_get_max_threads(), best * 1e3,
		    2.0 * n * (double)n * n / best * 1e-9);
	}
	bf16_peak(n, reps, a, b, c);
	free(a);
	free(b);
	free(c);
	return 0;
}
