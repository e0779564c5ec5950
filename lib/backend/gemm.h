/*
 * gemm.h - the fp32 matrix product every CPU path goes through, and the
 * names of the engine that computes it and of the CPU it runs on.
 *
 * The engine is oneDNN's sgemm where the build has oneDNN: it dispatches on
 * the instruction sets the CPU reports (AVX2, AVX-512, ...), so it is fast
 * on CPU models newer than the library.  OpenBLAS picks its kernel from a
 * table of CPU models instead, and Debian's 0.3.21 falls back to its SSE3
 * (Prescott) kernel on Intel models it does not know, at a fifth of the
 * speed.  OpenBLAS stays the engine of builds without oneDNN, the plain
 * twin (D2V_GEMM=openblas), and LAPACK's.
 */
#ifndef D2V_GEMM_H
#define D2V_GEMM_H

/* C (M,N) = alpha op(A) op(B) + beta C, row-major; ta and tb are 'N' or
 * 'T' (op(A) is (M,K), op(B) (K,N)), as dnnl_sgemm.  Outside an OpenMP
 * parallel region the engine uses every thread; inside one it runs on the
 * calling thread (oneDNN, and OpenBLAS's OpenMP build).  beta 0 ignores
 * what C held (NaN included). */
void d2v_sgemm(char ta, char tb, int M, int N, int K, float alpha,
    const float *A, int lda, const float *B, int ldb, float beta, float *C,
    int ldc);

/* 1 when d2v_sgemm may be called from inside an OpenMP parallel region
 * (and then runs on the calling thread): oneDNN, OpenBLAS's OpenMP and
 * sequential builds; not OpenBLAS's pthreads build. */
int d2v_sgemm_nests(void);

/* "oneDNN 2.6.3 sgemm (avx512_core_amx)" or "OpenBLAS 0.3.21 (SkylakeX)":
 * the engine, its version and its kernel or instruction set.  The engine
 * is chosen once, at the first call of either function; D2V_GEMM=openblas
 * chooses OpenBLAS where oneDNN is there too. */
const char *d2v_gemm_engine(void);

/* 1 when the engine is a slow fallback for this CPU (OpenBLAS's SSE
 * kernels on a CPU with AVX2): the commands warn. */
int d2v_gemm_slow(void);

/* "Intel(R) Xeon(R) Processor (family 6 model 143; avx2 avx512f
 * avx512_bf16 amx_bf16)": the CPU's name from /proc/cpuinfo with its
 * family, model and the vector flags that matter to the engines. */
const char *d2v_cpu_name(void);

#endif
