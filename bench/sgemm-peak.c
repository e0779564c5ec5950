/*
 * sgemm-peak - the fp32 matrix-product peak of this machine through the
 * BLAS d2v links (OpenBLAS), and oneDNN's bf16 matmul peak (bf16 operands,
 * fp32 result) where this build has oneDNN: the best of a few n x n x n
 * products each.
 *
 * Usage: sgemm-peak [N] [REPEATS]
 * Prints one JSON line per engine: impl, n, threads, best_ms, gflops; for
 * a bf16 matmul oneDNN cannot run on this CPU, gflops null and why.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cblas.h>
#include <omp.h>
#ifdef D2V_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#ifdef D2V_HAVE_DNNL
/* oneDNN's bf16 matmul, n x n x n: prints its JSON line */
static void
dnnl_peak(int n, int reps)
{
	dnnl_engine_t eng = NULL;
	dnnl_stream_t st = NULL;
	dnnl_memory_desc_t ad, bd, cd;
	dnnl_dims_t dims = {n, n};
	dnnl_matmul_desc_t md;
	dnnl_primitive_desc_t pd = NULL;
	dnnl_primitive_t p = NULL;
	dnnl_memory_t am = NULL, bm = NULL, cm = NULL;
	double best = 1e30;
	const char *why = NULL;

	if (dnnl_engine_create(&eng, dnnl_cpu, 0) ||
	    dnnl_stream_create(&st, eng, dnnl_stream_default_flags))
		why = "no oneDNN CPU engine";
	else if (dnnl_memory_desc_init_by_tag(&ad, 2, dims, dnnl_bf16, dnnl_ab) ||
	    dnnl_memory_desc_init_by_tag(&bd, 2, dims, dnnl_bf16, dnnl_ab) ||
	    dnnl_memory_desc_init_by_tag(&cd, 2, dims, dnnl_f32, dnnl_ab) ||
	    dnnl_matmul_desc_init(&md, &ad, &bd, NULL, &cd) ||
	    dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL) ||
	    dnnl_primitive_create(&p, pd))
		why = "oneDNN has no bf16 matmul for this CPU (needs AVX-512 BF16 or AMX)";
	else if (dnnl_memory_create(&am, &ad, eng, DNNL_MEMORY_ALLOCATE) ||
	    dnnl_memory_create(&bm, &bd, eng, DNNL_MEMORY_ALLOCATE) ||
	    dnnl_memory_create(&cm, &cd, eng, DNNL_MEMORY_ALLOCATE))
		why = "out of memory";
	if (why == NULL) {
		dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, am},
		    {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
		void *h;

		/* bf16 ones: 0x3f80 in every element of the operands */
		dnnl_memory_get_data_handle(am, &h);
		for (size_t i = 0; i < (size_t)n * n; i++)
			((unsigned short *)h)[i] = 0x3f80;
		dnnl_memory_get_data_handle(bm, &h);
		for (size_t i = 0; i < (size_t)n * n; i++)
			((unsigned short *)h)[i] = 0x3f80;
		for (int r = 0; r <= reps; r++) {
			double t = now();

			if (dnnl_primitive_execute(p, st, 3, args) ||
			    dnnl_stream_wait(st)) {
				why = "the bf16 matmul failed";
				break;
			}
			t = now() - t;
			if (r > 0 && t < best)
				best = t;
		}
	}
	if (why != NULL)
		printf("{\"impl\":\"onednn-bf16\",\"n\":%d,\"threads\":%d,"
		    "\"gflops\":null,\"why\":\"%s\"}\n", n,
		    omp_get_max_threads(), why);
	else
		printf("{\"impl\":\"onednn-bf16\",\"n\":%d,\"threads\":%d,"
		    "\"best_ms\":%.2f,\"gflops\":%.1f}\n", n,
		    omp_get_max_threads(), best * 1e3,
		    2.0 * n * (double)n * n / best * 1e-9);
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
	if (st)
		dnnl_stream_destroy(st);
	if (eng)
		dnnl_engine_destroy(eng);
}
#endif

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
	for (int r = 0; r <= reps; r++) {
		double t = now();

		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f,
		    a, n, b, n, 0.0f, c, n);
		t = now() - t;
		if (r > 0 && t < best) /* the first is a warm-up */
			best = t;
	}
	printf("{\"impl\":\"sgemm\",\"n\":%d,\"threads\":%d,\"best_ms\":%.2f,"
	    "\"gflops\":%.1f}\n", n, omp_get_max_threads(), best * 1e3,
	    2.0 * n * (double)n * n / best * 1e-9);
	free(a);
	free(b);
	free(c);
#ifdef D2V_HAVE_DNNL
	dnnl_peak(n, reps);
#endif
	return 0;
}
