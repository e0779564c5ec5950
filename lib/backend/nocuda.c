/* nocuda.c - d2v_backend_cuda of a build without the CUDA backend (make
 * CUDA=0, or no nvcc when it was built).  The commands that can use a GPU
 * link libd2vcuda.a before libd2v.a, whose cuda.o defines both first. */
#include "ops.h"

const d2v_ops *
d2v_backend_cuda(int bf16, d2v_err *err)
{
	(void)bf16;
	d2v_err_set(err, D2V_EINVAL, "this build has no CUDA backend (it was "
	    "built without nvcc, or with make CUDA=0)");
	return NULL;
}

int
d2v_cuda_built(void)
{
	return 0;
}
