/*
 * chunks.h - the row chunks of the column reductions (bias_grad, the
 * LayerNorm weight gradients, LayerScale's dg): a function of the row
 * count alone, so that the partial sums, and the bits, do not depend on
 * anything else.  Kernel sources only.
 */
#ifndef D2V_CHUNKS_H
#define D2V_CHUNKS_H

/* nchunk chunks of rpc rows covering rows: about 64 rows each, at most
 * `most` chunks */
static inline void
d2v_k_row_chunks(int rows, int most, int *nchunk, int *rpc)
{
	int n = (rows + 63) / 64, r;

	if (n > most)
		n = most;
	if (n < 1)
		n = 1;
	r = (rows + n - 1) / n;
	if (r < 1)
		r = 1;
	*rpc = r;
	*nchunk = (rows + r - 1) / r;
	if (*nchunk < 1)
		*nchunk = 1;
}

#endif
