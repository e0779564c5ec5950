/*
 * cuda.cu - the CUDA backend (ops.h): GEMMs on cuBLAS, convolutions on
 * cuDNN's backend (graph) API, everything else on the kernels of kernels/.
 *
 * Every buffer the model hands in comes from this table's alloc: managed
 * memory, which both the GPU and the model's own loops (gathers, masks,
 * the loss) read.  Every op queues its work on one stream and waits for
 * it before returning, so those loops always see finished results; the
 * first CUDA, cuBLAS or cuDNN failure is kept and reported by failed(),
 * after which every op does nothing.  Scratch is device memory that only
 * grows.  Compiled only where nvcc is found; it has been compiled here but
 * never run (no GPU on the machines that built it).
 */
extern "C" {
#include "ops.h"
}

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include <cublas_v2.h>
#include <cudnn.h>

#include "kernels.h"

static cudaStream_t st;
static cublasHandle_t blas;
static cudnnHandle_t dnn;
static int use_bf16;
static char fail_msg[512];

/* The first failure, kept; the ops stop once there is one. */
static int
failed_now(void)
{
	return fail_msg[0] != '\0';
}

static void
fail(const char *what, const char *why)
{
	if (!failed_now())
		snprintf(fail_msg, sizeof fail_msg, "CUDA backend: %s: %s", what,
		    why);
}

static int
cu_ok(cudaError_t e, const char *what)
{
	if (e != cudaSuccess) {
		fail(what, cudaGetErrorString(e));
		return 0;
	}
	return 1;
}

static int
blas_ok(cublasStatus_t s, const char *what)
{
	if (s != CUBLAS_STATUS_SUCCESS) {
		fail(what, cublasGetStatusString(s));
		return 0;
	}
	return 1;
}

static int
dnn_ok(cudnnStatus_t s, const char *what)
{
	if (s != CUDNN_STATUS_SUCCESS) {
		fail(what, cudnnGetErrorString(s));
		return 0;
	}
	return 1;
}

/* the end of every op: its kernels finished, their errors caught */
static void
done(const char *what)
{
	cu_ok(cudaGetLastError(), what);
	cu_ok(cudaStreamSynchronize(st), what);
}

static const char *
cuda_failed(void)
{
	return failed_now() ? fail_msg : NULL;
}

static void *
cuda_alloc(size_t bytes)
{
	void *p = NULL;

	if (cudaMallocManaged(&p, bytes > 0 ? bytes : 1, cudaMemAttachGlobal) !=
	    cudaSuccess) {
		cudaGetLastError(); /* out of memory is the caller's NULL */
		return NULL;
	}
	if (!cu_ok(cudaMemsetAsync(p, 0, bytes, st), "alloc") ||
	    !cu_ok(cudaStreamSynchronize(st), "alloc")) {
		cudaFree(p);
		return NULL;
	}
	return p;
}

static void
cuda_release(void *p)
{
	if (p != NULL)
		cudaFree(p);
}

/* page-locked host memory: its copies to the device go by DMA */
static void *
cuda_host_alloc(size_t bytes)
{
	void *p = NULL;

	if (cudaMallocHost(&p, bytes > 0 ? bytes : 1) != cudaSuccess) {
		cudaGetLastError(); /* out of memory is the caller's NULL */
		return NULL;
	}
	return p;
}

static void
cuda_host_release(void *p)
{
	if (p != NULL)
		cudaFreeHost(p);
}

/* Grow-only device scratch, one per slot. */
enum { S_A, S_B, S_W, S_RED, S_ATT, S_CONV, S_SLOTS };
static void *slot_p[S_SLOTS];
static size_t slot_n[S_SLOTS];

static void *
scratch(int slot, size_t bytes)
{
	if (bytes == 0)
		bytes = 1;
	if (slot_n[slot] >= bytes)
		return slot_p[slot];
	cudaStreamSynchronize(st);
	cudaFree(slot_p[slot]);
	slot_p[slot] = NULL;
	slot_n[slot] = 0;
	if (!cu_ok(cudaMalloc(&slot_p[slot], bytes), "scratch"))
		return NULL;
	slot_n[slot] = bytes;
	return slot_p[slot];
}

/* ---- GEMMs -------------------------------------------------------------
 * Row-major (M,K) is column-major (K,M): each product below is written
 * for cuBLAS's column-major view.  bf16: the operands are rounded into
 * scratch and multiplied by cublasGemmEx with fp32 sums. */

/* C (m,n) = alpha op(A) op(B) + beta C, column-major, lda/ldb/ldc */
static void
gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
    const float *A, int lda, const float *B, int ldb, float beta, float *C,
    int ldc, int bf16)
{
	const float one = 1;

	if (failed_now())
		return;
	if (!bf16) {
		blas_ok(cublasSgemm(blas, ta, tb, m, n, k, &one, A, lda, B, ldb,
		    &beta, C, ldc), "cublasSgemm");
		return;
	}
	blas_ok(cublasGemmEx(blas, ta, tb, m, n, k, &one, A, CUDA_R_16BF, lda,
	    B, CUDA_R_16BF, ldb, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
	    CUBLAS_GEMM_DEFAULT), "cublasGemmEx");
}

/* the operand x (n) as the GEMM reads it: x itself, or rounded to bf16 */
static const void *
operand(int slot, const float *x, size_t n)
{
	__nv_bfloat16 *b;

	if (!use_bf16)
		return x;
	if ((b = (__nv_bfloat16 *)scratch(slot, n * sizeof *b)) == NULL)
		return NULL;
	d2v_k_to_bf16(b, x, n, st);
	return b;
}

static void
matmul_forward(float *out, const float *in, const float *w, const float *b,
    int M, int K, int N)
{
	const float *A, *B;

	if (failed_now())
		return;
	A = (const float *)operand(S_W, w, (size_t)N * K);
	B = (const float *)operand(S_A, in, (size_t)M * K);
	if (A == NULL || B == NULL)
		return;
	/* out^T (N,M) = w (N,K) . in^T (K,M) */
	gemm(CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, A, K, B, K, 0, out, N, use_bf16);
	if (b != NULL)
		d2v_k_bias_add(out, b, M, N, st);
	done("matmul_forward");
}

static void
matmul_backward(float *din, float *dw, float *db, const float *dout,
    const float *in, const float *w, int M, int K, int N)
{
	const float *G;

	if (failed_now())
		return;
	if ((G = (const float *)operand(S_B, dout, (size_t)M * N)) == NULL)
		return;
	if (din != NULL) {
		const float *W = (const float *)operand(S_W, w, (size_t)N * K);

		/* din^T (K,M) += w^T (K,N) . dout^T (N,M) */
		if (W != NULL)
			gemm(CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, W, K, G, N, 1, din,
			    K, use_bf16);
	}
	if (dw != NULL) {
		const float *X = (const float *)operand(S_A, in, (size_t)M * K);

		/* dw^T (K,N) += in^T (K,M) . dout (M,N) */
		if (X != NULL)
			gemm(CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, X, K, G, N, 1, dw,
			    K, use_bf16);
	}
	if (db != NULL) {
		float *s = (float *)scratch(S_RED,
		    d2v_k_bias_grad_scratch(M, N) * sizeof(float));

		if (s != NULL)
			d2v_k_bias_grad(db, dout, M, N, s, st);
	}
	done("matmul_backward");
}

/* ---- normalisation and activations ------------------------------------ */

static void
layernorm_forward(float *out, float *mean, float *rstd, const float *in,
    const float *w, const float *b, int rows, int C, float eps)
{
	if (failed_now())
		return;
	d2v_k_layernorm_forward(out, mean, rstd, in, w, b, rows, C, eps, st);
	done("layernorm_forward");
}

static void
layernorm_backward(float *din, float *dw, float *db, const float *dout,
    const float *in, const float *mean, const float *rstd, const float *w,
    int rows, int C)
{
	float *s;

	if (failed_now())
		return;
	s = (float *)scratch(S_RED, d2v_k_layernorm_scratch(rows, C) *
	    sizeof(float));
	if (s == NULL)
		return;
	d2v_k_layernorm_backward(din, dw, db, dout, in, mean, rstd, w, rows, C,
	    s, st);
	done("layernorm_backward");
}

static void
gelu_forward(float *out, const float *in, size_t n)
{
	if (failed_now())
		return;
	d2v_k_gelu_forward(out, in, n, st);
	done("gelu_forward");
}

static void
gelu_backward(float *din, const float *in, const float *dout, size_t n)
{
	if (failed_now())
		return;
	d2v_k_gelu_backward(din, in, dout, n, st);
	done("gelu_backward");
}

static void
add(float *a, const float *b, size_t n)
{
	if (failed_now())
		return;
	d2v_k_add(a, b, n, st);
	done("add");
}

static void
mul(float *a, const float *b, size_t n)
{
	if (failed_now())
		return;
	d2v_k_mul(a, b, n, st);
	done("mul");
}

static void
instancenorm_forward(float *out, const float *in, int R, int T, int C,
    float eps, int acc, float scale)
{
	if (failed_now())
		return;
	d2v_k_instancenorm_forward(out, in, R, T, C, eps, acc, scale, st);
	done("instancenorm_forward");
}

/* ---- attention ---------------------------------------------------------
 * Per sequence r, the heads as one strided-batched GEMM: head h of q, k
 * and v starts hd floats after head h-1 in each token's (3, H, hd) row of
 * 3D floats; the scores of (r, h) are a (T,T) block of probs. */

static void
heads_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
    const float *A, int lda, long long sa, const float *B, int ldb,
    long long sb, float beta, float *C, int ldc, long long sc, int H)
{
	const float one = 1;

	if (failed_now())
		return;
	blas_ok(cublasSgemmStridedBatched(blas, ta, tb, m, n, k, &one, A, lda,
	    sa, B, ldb, sb, &beta, C, ldc, sc, H), "cublasSgemmStridedBatched");
}

static void
attention_forward(float *out, float *probs, const float *qkv,
    const float *drop, const float *slope, const int *pos, int R, int T,
    int D, int H)
{
	int hd = D / H;
	size_t TT = (size_t)T * T, pn = (size_t)R * H * TT;
	const float *pd = probs;

	if (failed_now())
		return;
	for (int r = 0; r < R; r++) {
		const float *base = qkv + (size_t)r * T * 3 * D;

		/* s (T_i,T_j), row-major = k^T q in column-major terms */
		heads_gemm(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, base + D, 3 * D, hd,
		    base, 3 * D, hd, 0, probs + (size_t)r * H * TT, T, TT, H);
	}
	d2v_k_softmax_forward(probs, slope, pos, R, H, T,
	    1.0f / sqrtf((float)hd), st);
	if (drop != NULL) {
		float *t = (float *)scratch(S_ATT, pn * sizeof(float));

		if (t == NULL)
			return;
		d2v_k_mul_to(t, probs, drop, pn, st);
		pd = t;
	}
	for (int r = 0; r < R; r++) {
		const float *base = qkv + (size_t)r * T * 3 * D;

		/* out^T (hd,T) of each head = v^T (hd,T) . p^T (T,T) */
		heads_gemm(CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, base + 2 * D, 3 * D,
		    hd, pd + (size_t)r * H * TT, T, TT, 0, out + (size_t)r * T * D,
		    D, hd, H);
	}
	done("attention_forward");
}

static void
attention_backward(float *dqkv, float *dslope, const float *dout,
    const float *qkv, const float *probs, const float *drop, const int *pos,
    int R, int T, int D, int H)
{
	int hd = D / H;
	size_t TT = (size_t)T * T, pn = (size_t)R * H * TT;
	float *dp, *red = NULL;
	const float *pd = probs;

	if (failed_now() || (dqkv == NULL && dslope == NULL))
		return;
	/* dp (R,H,T,T) and, with dropout, the dropped probabilities after it */
	dp = (float *)scratch(S_ATT, (drop ? 2 : 1) * pn * sizeof(float));
	if (dp == NULL)
		return;
	if (drop != NULL) {
		d2v_k_mul_to(dp + pn, probs, drop, pn, st);
		pd = dp + pn;
	}
	for (int r = 0; r < R; r++) {
		const float *base = qkv + (size_t)r * T * 3 * D;
		const float *go = dout + (size_t)r * T * D;

		/* dp (T_i,T_j) = do v^T: column-major v^T-rows x do */
		heads_gemm(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, base + 2 * D, 3 * D,
		    hd, go, D, hd, 0, dp + (size_t)r * H * TT, T, TT, H);
		/* dv^T (hd,T_j) += do^T (hd,T_i) . p (T_i,T_j) */
		if (dqkv != NULL)
			heads_gemm(CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, go, D, hd,
			    pd + (size_t)r * H * TT, T, TT, 1,
			    dqkv + (size_t)r * T * 3 * D + 2 * D, 3 * D, hd, H);
	}
	if (drop != NULL)
		d2v_k_mul(dp, drop, pn, st);
	if (dslope != NULL && (red = (float *)scratch(S_RED,
	    d2v_k_softmax_scratch(R, H, T) * sizeof(float))) == NULL)
		return;
	/* slope is read only for its NULL-ness: pos says whether ALiBi ran */
	d2v_k_softmax_backward(dp, dslope, probs, NULL, pos, R, H, T,
	    1.0f / sqrtf((float)hd), red, st);
	for (int r = 0; dqkv != NULL && r < R; r++) {
		const float *base = qkv + (size_t)r * T * 3 * D;
		float *dbase = dqkv + (size_t)r * T * 3 * D;
		const float *ds = dp + (size_t)r * H * TT;

		/* dq^T (hd,T_i) += k^T (hd,T_j) . ds^T */
		heads_gemm(CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, base + D, 3 * D, hd,
		    ds, T, TT, 1, dbase, 3 * D, hd, H);
		/* dk^T (hd,T_j) += q^T (hd,T_i) . ds */
		heads_gemm(CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, base, 3 * D, hd, ds,
		    T, TT, 1, dbase + D, 3 * D, hd, H);
	}
	done("attention_backward");
}

/* ---- convolutions on cuDNN's backend API -------------------------------
 * Every convolution is a 2-D one (1-D ones have height 1) on channels-last
 * tensors, described to cuDNN as (N, C, H, W) with NHWC strides; the
 * weight (Co, Ci/G, kh, kw) in its own packed layout.  One execution plan
 * per shape and direction, cached. */

enum { C_FWD, C_BWD_DATA, C_BWD_FILTER };

typedef struct conv_key {
	int kind, R, Hh, Wi, Ho, Wo, Ci, Co, kh, kw, sw, ph, pw, G;
} conv_key;

typedef struct conv_plan {
	conv_key key;
	cudnnBackendDescriptor_t plan;
	int64_t ws;
} conv_plan;

#define CONV_PLANS 64
static conv_plan plans[CONV_PLANS];
static int nplans;

static cudnnBackendDescriptor_t
tensor_desc(int64_t uid, const int64_t dims[4], const int64_t strides[4])
{
	cudnnBackendDescriptor_t t;
	cudnnDataType_t dt = CUDNN_DATA_FLOAT;
	int64_t align = 4;

	if (!dnn_ok(cudnnBackendCreateDescriptor(CUDNN_BACKEND_TENSOR_DESCRIPTOR,
	    &t), "tensor descriptor"))
		return NULL;
	if (!dnn_ok(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE,
	    CUDNN_TYPE_DATA_TYPE, 1, &dt), "tensor type") ||
	    !dnn_ok(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS,
	    CUDNN_TYPE_INT64, 4, dims), "tensor dims") ||
	    !dnn_ok(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_STRIDES,
	    CUDNN_TYPE_INT64, 4, strides), "tensor strides") ||
	    !dnn_ok(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID,
	    CUDNN_TYPE_INT64, 1, &uid), "tensor id") ||
	    !dnn_ok(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT,
	    CUDNN_TYPE_INT64, 1, &align), "tensor alignment") ||
	    !dnn_ok(cudnnBackendFinalize(t), "tensor finalize")) {
		cudnnBackendDestroyDescriptor(t);
		return NULL;
	}
	return t;
}

/* the operation's attributes of each direction: x, w, y, conv, alpha, beta */
static const cudnnBackendAttributeName_t conv_attr[3][6] = {
	{ CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA },
	{ CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA },
	{ CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
	  CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA },
};
static const cudnnBackendDescriptorType_t conv_op[3] = {
	CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
	CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
	CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
};

/* the first engine of heuristics mode hm whose plan finalizes, or NULL */
static cudnnBackendDescriptor_t
plan_from(cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t hm)
{
	cudnnBackendDescriptor_t heur, cfg[8], plan = NULL;
	int64_t n = 0;

	if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR,
	    &heur) != CUDNN_STATUS_SUCCESS)
		return NULL;
	if (cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
	    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph) != CUDNN_STATUS_SUCCESS ||
	    cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE,
	    CUDNN_TYPE_HEUR_MODE, 1, &hm) != CUDNN_STATUS_SUCCESS ||
	    cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS) {
		cudnnBackendDestroyDescriptor(heur);
		return NULL;
	}
	for (int i = 0; i < 8; i++)
		cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR,
		    &cfg[i]);
	cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
	    CUDNN_TYPE_BACKEND_DESCRIPTOR, 8, &n, cfg);
	for (int64_t i = 0; i < n && plan == NULL; i++) {
		cudnnBackendDescriptor_t p;

		if (cudnnBackendCreateDescriptor(
		    CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &p) !=
		    CUDNN_STATUS_SUCCESS)
			break;
		if (cudnnBackendSetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
		    CUDNN_TYPE_HANDLE, 1, &dnn) == CUDNN_STATUS_SUCCESS &&
		    cudnnBackendSetAttribute(p,
		    CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
		    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg[i]) ==
		    CUDNN_STATUS_SUCCESS &&
		    cudnnBackendFinalize(p) == CUDNN_STATUS_SUCCESS)
			plan = p;
		else
			cudnnBackendDestroyDescriptor(p);
	}
	for (int i = 0; i < 8; i++)
		cudnnBackendDestroyDescriptor(cfg[i]);
	cudnnBackendDestroyDescriptor(heur);
	return plan;
}

static conv_plan *
conv_plan_get(const conv_key *k)
{
	cudnnBackendDescriptor_t x, w, y, conv = NULL, op = NULL, graph = NULL;
	cudnnBackendDescriptor_t plan = NULL;
	int64_t xd[4] = { k->R, k->Ci, k->Hh, k->Wi };
	int64_t xs[4] = { (int64_t)k->Hh * k->Wi * k->Ci, 1,
	    (int64_t)k->Wi * k->Ci, k->Ci };
	int64_t yd[4] = { k->R, k->Co, k->Ho, k->Wo };
	int64_t ys[4] = { (int64_t)k->Ho * k->Wo * k->Co, 1,
	    (int64_t)k->Wo * k->Co, k->Co };
	int64_t cg = k->Ci / k->G;
	int64_t wd[4] = { k->Co, cg, k->kh, k->kw };
	int64_t ws[4] = { cg * k->kh * k->kw, (int64_t)k->kh * k->kw, k->kw, 1 };
	int64_t two = 2, pad[2] = { k->ph, k->pw }, dil[2] = { 1, 1 };
	int64_t str[2] = { 1, k->sw };
	cudnnDataType_t ct = CUDNN_DATA_FLOAT;
	cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
	float alpha = 1, beta = k->kind == C_FWD ? 0.0f : 1.0f;
	const cudnnBackendAttributeName_t *at = conv_attr[k->kind];
	conv_plan *cp = NULL;

	for (int i = 0; i < nplans; i++)
		if (memcmp(&plans[i].key, k, sizeof *k) == 0)
			return &plans[i];
	x = tensor_desc('x', xd, xs);
	w = tensor_desc('w', wd, ws);
	y = tensor_desc('y', yd, ys);
	if (x == NULL || w == NULL || y == NULL)
		goto out;
	if (!dnn_ok(cudnnBackendCreateDescriptor(
	    CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, &conv), "convolution") ||
	    !dnn_ok(cudnnBackendSetAttribute(conv,
	    CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &two),
	    "convolution dims") ||
	    !dnn_ok(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE,
	    CUDNN_TYPE_DATA_TYPE, 1, &ct), "convolution type") ||
	    !dnn_ok(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE,
	    CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode), "convolution mode") ||
	    !dnn_ok(cudnnBackendSetAttribute(conv,
	    CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad),
	    "convolution padding") ||
	    !dnn_ok(cudnnBackendSetAttribute(conv,
	    CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad),
	    "convolution padding") ||
	    !dnn_ok(cudnnBackendSetAttribute(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS,
	    CUDNN_TYPE_INT64, 2, dil), "convolution dilation") ||
	    !dnn_ok(cudnnBackendSetAttribute(conv,
	    CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, str),
	    "convolution stride") ||
	    !dnn_ok(cudnnBackendFinalize(conv), "convolution finalize"))
		goto out;
	if (!dnn_ok(cudnnBackendCreateDescriptor(conv_op[k->kind], &op),
	    "convolution op") ||
	    !dnn_ok(cudnnBackendSetAttribute(op, at[0],
	    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x), "op x") ||
	    !dnn_ok(cudnnBackendSetAttribute(op, at[1],
	    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w), "op w") ||
	    !dnn_ok(cudnnBackendSetAttribute(op, at[2],
	    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y), "op y") ||
	    !dnn_ok(cudnnBackendSetAttribute(op, at[3],
	    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv), "op conv") ||
	    !dnn_ok(cudnnBackendSetAttribute(op, at[4], CUDNN_TYPE_FLOAT, 1,
	    &alpha), "op alpha") ||
	    !dnn_ok(cudnnBackendSetAttribute(op, at[5], CUDNN_TYPE_FLOAT, 1,
	    &beta), "op beta") ||
	    !dnn_ok(cudnnBackendFinalize(op), "op finalize"))
		goto out;
	if (!dnn_ok(cudnnBackendCreateDescriptor(
	    CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &graph), "graph") ||
	    !dnn_ok(cudnnBackendSetAttribute(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS,
	    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op), "graph ops") ||
	    !dnn_ok(cudnnBackendSetAttribute(graph,
	    CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &dnn),
	    "graph handle") ||
	    !dnn_ok(cudnnBackendFinalize(graph), "graph finalize"))
		goto out;
	if ((plan = plan_from(graph, CUDNN_HEUR_MODE_A)) == NULL &&
	    (plan = plan_from(graph, CUDNN_HEUR_MODE_FALLBACK)) == NULL) {
		char what[160];

		snprintf(what, sizeof what, "convolution %d of (%d,%dx%d,%d) -> "
		    "(%dx%d,%d), kernel %dx%d, groups %d", k->kind, k->R, k->Hh,
		    k->Wi, k->Ci, k->Ho, k->Wo, k->Co, k->kh, k->kw, k->G);
		fail(what, "cuDNN has no engine for it");
		goto out;
	}
	if (nplans == CONV_PLANS) { /* full: the oldest goes */
		cudnnBackendDestroyDescriptor(plans[0].plan);
		memmove(plans, plans + 1, (CONV_PLANS - 1) * sizeof *plans);
		nplans--;
	}
	cp = &plans[nplans++];
	cp->key = *k;
	cp->plan = plan;
	cp->ws = 0;
	cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
	    CUDNN_TYPE_INT64, 1, NULL, &cp->ws);
out:
	if (graph) cudnnBackendDestroyDescriptor(graph);
	if (op) cudnnBackendDestroyDescriptor(op);
	if (conv) cudnnBackendDestroyDescriptor(conv);
	if (x) cudnnBackendDestroyDescriptor(x);
	if (w) cudnnBackendDestroyDescriptor(w);
	if (y) cudnnBackendDestroyDescriptor(y);
	return cp;
}

/* runs one direction: x, w, y are the tensors the key's x, w and y name
 * (for the backward ones, dx or dw is the output, added to) */
static void
conv_run(const conv_key *k, void *x, void *w, void *y)
{
	conv_plan *cp;
	cudnnBackendDescriptor_t vp;
	int64_t uid[3] = { 'x', 'w', 'y' };
	void *ptr[3] = { x, w, y }, *ws = NULL;

	if (failed_now() || (cp = conv_plan_get(k)) == NULL)
		return;
	if (cp->ws > 0 && (ws = scratch(S_CONV, (size_t)cp->ws)) == NULL)
		return;
	if (!dnn_ok(cudnnBackendCreateDescriptor(
	    CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp), "variant pack"))
		return;
	if (dnn_ok(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
	    CUDNN_TYPE_INT64, 3, uid), "variant ids") &&
	    dnn_ok(cudnnBackendSetAttribute(vp,
	    CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, ptr),
	    "variant pointers") &&
	    dnn_ok(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
	    CUDNN_TYPE_VOID_PTR, 1, &ws), "variant workspace") &&
	    dnn_ok(cudnnBackendFinalize(vp), "variant finalize"))
		dnn_ok(cudnnBackendExecute(dnn, cp->plan, vp), "cudnnBackendExecute");
	cudnnBackendDestroyDescriptor(vp);
}

static void
conv_any_forward(const conv_key *k, float *out, const float *in,
    const float *w, const float *b)
{
	conv_key f = *k;

	if (failed_now())
		return;
	f.kind = C_FWD;
	conv_run(&f, (void *)in, (void *)w, out);
	if (b != NULL)
		d2v_k_bias_add(out, b, f.R * f.Ho * f.Wo, f.Co, st);
}

static void
conv_any_backward(const conv_key *k, float *din, float *dw, float *db,
    const float *dout, const float *in, const float *w)
{
	conv_key f = *k;

	if (failed_now())
		return;
	if (din != NULL) {
		f.kind = C_BWD_DATA;
		conv_run(&f, din, (void *)w, (void *)dout);
	}
	if (dw != NULL) {
		f.kind = C_BWD_FILTER;
		conv_run(&f, (void *)in, dw, (void *)dout);
	}
	if (db != NULL) {
		int M = f.R * f.Ho * f.Wo;
		float *s = (float *)scratch(S_RED,
		    d2v_k_bias_grad_scratch(M, f.Co) * sizeof(float));

		if (s != NULL)
			d2v_k_bias_grad(db, dout, M, f.Co, s, st);
	}
}

static conv_key
key2d(int R, int Hh, int Ww, int Ci, int Co, int k, int G)
{
	conv_key c;

	memset(&c, 0, sizeof c); /* the key is compared bytewise */
	c.R = R; c.Hh = c.Ho = Hh; c.Wi = c.Wo = Ww; c.Ci = Ci; c.Co = Co;
	c.kh = c.kw = k; c.sw = 1; c.ph = c.pw = k / 2; c.G = G;
	return c;
}

static conv_key
key1d(int R, int Ti, int Ci, int Co, int k, int s, int pad, int G)
{
	conv_key c;

	memset(&c, 0, sizeof c);
	c.R = R; c.Hh = c.Ho = 1; c.Wi = Ti; c.Wo = (Ti + 2 * pad - k) / s + 1;
	c.Ci = Ci; c.Co = Co; c.kh = 1; c.kw = k; c.sw = s; c.ph = 0;
	c.pw = pad; c.G = G;
	return c;
}

static void
conv2d_forward(float *out, float *col, const float *in, const float *w,
    const float *b, int R, int Hh, int Ww, int Ci, int Co, int k, int G)
{
	conv_key c = key2d(R, Hh, Ww, Ci, Co, k, G);

	(void)col;
	conv_any_forward(&c, out, in, w, b);
	done("conv2d_forward");
}

static void
conv2d_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, int R, int Hh,
    int Ww, int Ci, int Co, int k, int G)
{
	conv_key c = key2d(R, Hh, Ww, Ci, Co, k, G);

	(void)col; (void)dcol;
	conv_any_backward(&c, din, dw, db, dout, in, w);
	done("conv2d_backward");
}

static void
conv1d_forward(float *out, float *col, const float *in, const float *w,
    const float *b, int R, int Ti, int Ci, int Co, int k, int s, int pad,
    int G)
{
	conv_key c = key1d(R, Ti, Ci, Co, k, s, pad, G);

	(void)col;
	conv_any_forward(&c, out, in, w, b);
	done("conv1d_forward");
}

static void
conv1d_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, int R, int Ti,
    int Ci, int Co, int k, int s, int pad, int G)
{
	conv_key c = key1d(R, Ti, Ci, Co, k, s, pad, G);

	(void)col; (void)dcol;
	conv_any_backward(&c, din, dw, db, dout, in, w);
	done("conv1d_backward");
}

/* ---- the visible tokens ------------------------------------------------ */

static void
gather_tokens(float *out, const float *src, const int *idx,
    const float *first, int R, int M, int N, int V, int E, int D)
{
	if (failed_now())
		return;
	d2v_k_gather_tokens(out, src, idx, first, R, M, N, V, E, D, st);
	done("gather_tokens");
}

static void
scatter_tokens(float *dsrc, float *dfirst, const float *din, const int *idx,
    int R, int M, int N, int V, int E, int D)
{
	if (failed_now())
		return;
	d2v_k_scatter_tokens(dsrc, dfirst, din, idx, R, M, N, V, E, D, st);
	done("scatter_tokens");
}

/* ---- memory ------------------------------------------------------------ */

/* either side may be host memory: cudaMemcpyDefault finds which */
static void
copy(void *dst, const void *src, size_t bytes)
{
	if (failed_now() || bytes == 0 || dst == src)
		return;
	cu_ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, st), "copy");
	done("copy");
}

static void
zero(void *p, size_t bytes)
{
	if (failed_now() || bytes == 0)
		return;
	cu_ok(cudaMemsetAsync(p, 0, bytes, st), "zero");
	done("zero");
}

static void
add_bcast(float *a, const float *b, int B, size_t n)
{
	if (failed_now())
		return;
	d2v_k_add_bcast(a, b, B, n, st);
	done("add_bcast");
}

/* ---- rows by index, the decoder's input, the masked positions ---------- */

static void
gather_rows(float *out, const float *table, const int32_t *ids, int n, int D)
{
	if (failed_now())
		return;
	d2v_k_gather_rows(out, table, ids, n, D, st);
	done("gather_rows");
}

static void
scatter_rows(float *dtable, const float *din, const int32_t *ids, int n,
    int D)
{
	if (failed_now())
		return;
	d2v_k_scatter_rows(dtable, din, ids, n, D, st);
	done("scatter_rows");
}

static void
place_tokens(float *out, const float *in, const int *idx, const float *scale,
    int R, int N, int V, int E, int D)
{
	if (failed_now())
		return;
	d2v_k_place_tokens(out, in, idx, scale, R, N, V, E, D, st);
	done("place_tokens");
}

static void
pick_tokens(float *dout, const float *din, const int *idx, const float *scale,
    int R, int N, int V, int E, int D)
{
	if (failed_now())
		return;
	d2v_k_pick_tokens(dout, din, idx, scale, R, N, V, E, D, st);
	done("pick_tokens");
}

static void
mask_tokens(float *out, const float *src, const uint8_t *mask,
    const float *fill, int R, int M, int N, int D)
{
	if (failed_now())
		return;
	d2v_k_mask_tokens(out, src, mask, fill, R, M, N, D, st);
	done("mask_tokens");
}

static void
unmask_tokens(float *dsrc, float *dfill, const float *din,
    const uint8_t *mask, int R, int M, int N, int D)
{
	if (failed_now())
		return;
	d2v_k_unmask_tokens(dsrc, dfill, din, mask, R, M, N, D, st);
	done("unmask_tokens");
}

static void
noise_fill(float *out, const uint8_t *mask, int R, int N, int D, float std,
    uint64_t seed, uint64_t row0)
{
	if (failed_now())
		return;
	d2v_k_noise_fill(out, mask, R, N, D, std, seed, row0, st);
	done("noise_fill");
}

static void
drop_fill(float *buf, int rows, size_t per, double p, double dp,
    uint64_t seed, uint64_t kind, uint64_t first)
{
	if (failed_now())
		return;
	d2v_k_drop_fill(buf, rows, per, p, dp, seed, kind, first, st);
	done("drop_fill");
}

/* ---- LayerScale -------------------------------------------------------- */

static void
layerscale_forward(float *out, const float *g, const float *x, const float *s,
    int rows, int D)
{
	if (failed_now())
		return;
	d2v_k_layerscale_forward(out, g, x, s, rows, D, st);
	done("layerscale_forward");
}

static void
layerscale_backward(float *dx, float *dg, const float *dy, const float *g,
    const float *x, const float *s, int rows, int D)
{
	double *sc;

	if (failed_now())
		return;
	sc = (double *)scratch(S_RED, (d2v_k_layerscale_scratch(rows, D) + 1) *
	    sizeof(double));
	if (sc == NULL)
		return;
	d2v_k_layerscale_backward(dx, dg, dy, g, x, s, rows, D, sc, st);
	done("layerscale_backward");
}

/* ---- the losses and the statistics ------------------------------------- */

/* the double a launcher left at the head of the reduction scratch s */
static double
result(const double *s, const char *what)
{
	double v = 0;

	cu_ok(cudaMemcpyAsync(&v, s, sizeof v, cudaMemcpyDeviceToHost, st),
	    what);
	done(what);
	return failed_now() ? 0 : v;
}

static double
masked_loss(float *dp, const float *pred, const float *y, const uint8_t *mask,
    int R, int M, int N, int T, int off, int D, double w, double beta,
    double norm)
{
	double *s;

	if (failed_now())
		return 0;
	s = (double *)scratch(S_RED, (d2v_k_loss_scratch(R, N, D) + 1) *
	    sizeof(double));
	if (s == NULL)
		return 0;
	d2v_k_masked_loss(s, dp, pred, y, mask, R, M, N, T, off, D, w, beta,
	    norm, s + 1, st);
	return result(s, "masked_loss");
}

static double
masked_std(const float *x, const uint8_t *mask, int R, int N, int T, int off,
    int D)
{
	double *s;

	if (failed_now())
		return 0;
	s = (double *)scratch(S_RED, (d2v_k_loss_scratch(R, N, D) + 1) *
	    sizeof(double));
	if (s == NULL)
		return 0;
	d2v_k_masked_std(s, x, mask, R, N, T, off, D, s + 1, st);
	return result(s, "masked_std");
}

static void
mean_tokens(float *out, const float *in, int B, int N, int D)
{
	if (failed_now())
		return;
	d2v_k_mean_tokens(out, in, B, N, D, st);
	done("mean_tokens");
}

/* ---- the optimiser ----------------------------------------------------- */

static double
sumsq(const float *x, size_t n)
{
	double *s;

	if (failed_now())
		return 0;
	s = (double *)scratch(S_RED, (d2v_k_sumsq_scratch(n) + 1) *
	    sizeof(double));
	if (s == NULL)
		return 0;
	d2v_k_sumsq(s, x, n, s + 1, st);
	return result(s, "sumsq");
}

static void
scale(float *x, size_t n, float c)
{
	if (failed_now())
		return;
	d2v_k_scale(x, n, c, st);
	done("scale");
}

static void
adamw(float *p, const float *g, float *m, float *v, size_t n, double b1,
    double b2, double step, double eps, float decay)
{
	if (failed_now())
		return;
	d2v_k_adamw(p, g, m, v, n, (float)b1, (float)b2, (float)step,
	    (float)eps, decay, st);
	done("adamw");
}

static void
ema(float *t, const float *s, size_t n, double tau)
{
	if (failed_now())
		return;
	d2v_k_ema(t, s, n, (float)tau, (float)(1 - tau), st);
	done("ema");
}

static const d2v_ops cuda_ops = {
	.name = "cuda",
	.alloc = cuda_alloc,
	.release = cuda_release,
	.host_alloc = cuda_host_alloc,
	.host_release = cuda_host_release,
	.failed = cuda_failed,
	.copy = copy,
	.zero = zero,
	.matmul_forward = matmul_forward,
	.matmul_backward = matmul_backward,
	.layernorm_forward = layernorm_forward,
	.layernorm_backward = layernorm_backward,
	.gelu_forward = gelu_forward,
	.gelu_backward = gelu_backward,
	.attention_forward = attention_forward,
	.attention_backward = attention_backward,
	.conv2d_forward = conv2d_forward,
	.conv2d_backward = conv2d_backward,
	.conv1d_forward = conv1d_forward,
	.conv1d_backward = conv1d_backward,
	.add = add,
	.mul = mul,
	.instancenorm_forward = instancenorm_forward,
	.gather_tokens = gather_tokens,
	.scatter_tokens = scatter_tokens,
	.add_bcast = add_bcast,
	.gather_rows = gather_rows,
	.scatter_rows = scatter_rows,
	.place_tokens = place_tokens,
	.pick_tokens = pick_tokens,
	.mask_tokens = mask_tokens,
	.unmask_tokens = unmask_tokens,
	.noise_fill = noise_fill,
	.drop_fill = drop_fill,
	.layerscale_forward = layerscale_forward,
	.layerscale_backward = layerscale_backward,
	.masked_loss = masked_loss,
	.masked_std = masked_std,
	.mean_tokens = mean_tokens,
	.sumsq = sumsq,
	.scale = scale,
	.adamw = adamw,
	.ema = ema,
};

static d2v_ops cuda_bf16_ops;

extern "C" const d2v_ops *
d2v_backend_cuda(int bf16, d2v_err *err)
{
	static int ready;
	int n = 0, dev = 0;
	cudaError_t e;
	cudaDeviceProp prop;

	if (!ready) {
		if ((e = cudaGetDeviceCount(&n)) != cudaSuccess) {
			d2v_err_set(err, D2V_EINVAL, "no usable GPU: "
			    "cudaGetDeviceCount: %s (CUDA error %d)",
			    cudaGetErrorString(e), (int)e);
			return NULL;
		}
		if (n < 1) {
			d2v_err_set(err, D2V_EINVAL, "no usable GPU: the CUDA "
			    "runtime sees no device");
			return NULL;
		}
		/* D2V_CUDA_DEVICE, else one GPU per local rank under mpirun,
		 * else the first */
		if (getenv("D2V_CUDA_DEVICE") != NULL)
			dev = atoi(getenv("D2V_CUDA_DEVICE"));
		else if (getenv("OMPI_COMM_WORLD_LOCAL_RANK") != NULL)
			dev = atoi(getenv("OMPI_COMM_WORLD_LOCAL_RANK")) % n;
		if (dev < 0 || dev >= n) {
			d2v_err_set(err, D2V_EINVAL, "no usable GPU: device %d of "
			    "%d (D2V_CUDA_DEVICE)", dev, n);
			return NULL;
		}
		if ((e = cudaSetDevice(dev)) != cudaSuccess ||
		    (e = cudaGetDeviceProperties(&prop, dev)) != cudaSuccess ||
		    (e = cudaStreamCreate(&st)) != cudaSuccess) {
			d2v_err_set(err, D2V_EINVAL, "no usable GPU: %s",
			    cudaGetErrorString(e));
			return NULL;
		}
		if (!prop.managedMemory) {
			d2v_err_set(err, D2V_EINVAL, "no usable GPU: %s has no "
			    "managed memory", prop.name);
			return NULL;
		}
		if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS ||
		    cublasSetStream(blas, st) != CUBLAS_STATUS_SUCCESS) {
			d2v_err_set(err, D2V_EINVAL, "cuBLAS did not start on %s",
			    prop.name);
			return NULL;
		}
		if (cudnnCreate(&dnn) != CUDNN_STATUS_SUCCESS ||
		    cudnnSetStream(dnn, st) != CUDNN_STATUS_SUCCESS) {
			d2v_err_set(err, D2V_EINVAL, "cuDNN did not start on %s",
			    prop.name);
			return NULL;
		}
		cuda_bf16_ops = cuda_ops;
		cuda_bf16_ops.name = "cuda-bf16";
		ready = 1;
	}
	/* one process runs one precision: the GEMMs read use_bf16 */
	use_bf16 = bf16 != 0;
	return bf16 ? &cuda_bf16_ops : &cuda_ops;
}

extern "C" int
d2v_cuda_built(void)
{
	return 1;
}
