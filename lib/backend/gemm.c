/* gemm.c - the fp32 matrix product and its engine (see gemm.h). */
#include "gemm.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#ifdef D2V_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int use_dnnl;
static int slow;
static char engine[160];
static char cpu[256];

/* the value of "key\t: value" lines of /proc/cpuinfo's first processor */
static int
cpuinfo(const char *key, char *val, size_t n)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[8192];
	size_t k = strlen(key);
	int found = 0;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof line, f) != NULL) {
		char *c;

		if (line[0] == '\n')
			break; /* the end of the first processor */
		if (strncmp(line, key, k) != 0 || (line[k] != ' ' &&
		    line[k] != '\t' && line[k] != ':'))
			continue;
		if ((c = strchr(line, ':')) == NULL)
			continue;
		c += 1 + (c[1] == ' ');
		c[strcspn(c, "\n")] = '\0';
		snprintf(val, n, "%s", c);
		found = 1;
		break;
	}
	fclose(f);
	return found;
}

static int
has_flag(const char *flags, const char *f)
{
	size_t k = strlen(f);

	for (const char *p = flags; (p = strstr(p, f)) != NULL; p += k)
		if ((p == flags || p[-1] == ' ') && (p[k] == ' ' || p[k] == '\0'))
			return 1;
	return 0;
}

static void
describe_cpu(int *avx2)
{
	static const char *want[] = {"avx2", "fma", "avx512f", "avx512_bf16",
	    "avx512_fp16", "amx_bf16", "amx_tile"};
	char name[128] = "unknown CPU", fam[16] = "?", mod[16] = "?";
	char *flags = malloc(8192);
	size_t n;

	cpuinfo("model name", name, sizeof name);
	cpuinfo("cpu family", fam, sizeof fam);
	cpuinfo("model", mod, sizeof mod);
	n = (size_t)snprintf(cpu, sizeof cpu, "%s (family %s model %s;", name,
	    fam, mod);
	*avx2 = 0;
	if (flags != NULL && cpuinfo("flags", flags, 8192)) {
		int any = 0;

		for (size_t i = 0; i < sizeof want / sizeof *want; i++)
			if (has_flag(flags, want[i]) && n < sizeof cpu) {
				n += (size_t)snprintf(cpu + n, sizeof cpu - n, " %s",
				    want[i]);
				any = 1;
			}
		if (!any && n < sizeof cpu)
			n += (size_t)snprintf(cpu + n, sizeof cpu - n, " no AVX2");
		*avx2 = has_flag(flags, "avx2");
	} else if (n < sizeof cpu) {
		n += (size_t)snprintf(cpu + n, sizeof cpu - n, " flags unknown");
	}
	if (n < sizeof cpu)
		snprintf(cpu + n, sizeof cpu - n, ")");
	free(flags);
}

#ifdef D2V_HAVE_DNNL
static const char *
isa_name(dnnl_cpu_isa_t isa)
{
	switch ((int)isa) {
	case dnnl_cpu_isa_sse41: return "sse41";
	case dnnl_cpu_isa_avx: return "avx";
	case dnnl_cpu_isa_avx2: return "avx2";
	case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
	case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
	case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
	case dnnl_cpu_isa_avx512_core: return "avx512_core";
	case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
	case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
	case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
	default: return "baseline";
	}
}
#endif

static void
choose(void)
{
	const char *want = getenv("D2V_GEMM");
	char *core = openblas_get_corename();
	int avx2;

	describe_cpu(&avx2);
#ifdef D2V_HAVE_DNNL
	if (want == NULL || strcmp(want, "openblas") != 0) {
		const dnnl_version_t *v = dnnl_version();
		dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();

		use_dnnl = 1;
		snprintf(engine, sizeof engine, "oneDNN %d.%d.%d sgemm (%s)",
		    v->major, v->minor, v->patch, isa_name(isa));
		slow = avx2 && (isa == dnnl_cpu_isa_sse41 ||
		    isa == dnnl_cpu_isa_avx);
		return;
	}
#endif
	(void)want;
	{
		const char *v = strstr(OPENBLAS_VERSION, "OpenBLAS ");

		v = v ? v + 9 : "?";
		snprintf(engine, sizeof engine, "OpenBLAS %.*s (%s)",
		    (int)strcspn(v, " "), v, core ? core : "?");
	}
	/* the kernels before Haswell's have no AVX2 */
	slow = avx2 && core != NULL && (strcmp(core, "Prescott") == 0 ||
	    strcmp(core, "Core2") == 0 || strcmp(core, "Penryn") == 0 ||
	    strcmp(core, "Dunnington") == 0 || strcmp(core, "Nehalem") == 0 ||
	    strcmp(core, "Atom") == 0 || strcmp(core, "Sandybridge") == 0 ||
	    strcmp(core, "Katmai") == 0 || strcmp(core, "Northwood") == 0 ||
	    strcmp(core, "Barcelona") == 0 || strcmp(core, "Bulldozer") == 0);
}

const char *
d2v_gemm_engine(void)
{
	pthread_once(&once, choose);
	return engine;
}

int
d2v_gemm_slow(void)
{
	pthread_once(&once, choose);
	return slow;
}

int
d2v_sgemm_nests(void)
{
	pthread_once(&once, choose);
	return use_dnnl || openblas_get_parallel() != 1;
}

const char *
d2v_cpu_name(void)
{
	pthread_once(&once, choose);
	return cpu;
}

void
d2v_sgemm(char ta, char tb, int M, int N, int K, float alpha,
    const float *A, int lda, const float *B, int ldb, float beta, float *C,
    int ldc)
{
	pthread_once(&once, choose);
	if (M <= 0 || N <= 0)
		return;
#ifdef D2V_HAVE_DNNL
	if (use_dnnl && K > 0 && dnnl_sgemm(ta, tb, M, N, K, alpha, A, lda, B,
	    ldb, beta, C, ldc) == dnnl_success)
		return;
#endif
	if (K <= 0) { /* C = beta C, as BLAS's reference does */
		for (int i = 0; i < M; i++)
			for (int j = 0; j < N; j++)
				C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f :
				    beta * C[(size_t)i * ldc + j];
		return;
	}
	cblas_sgemm(CblasRowMajor, ta == 'T' ? CblasTrans : CblasNoTrans,
	    tb == 'T' ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
	    beta, C, ldc);
}
