/*
 * idx.h - IDX archives, the format of MNIST, Fashion-MNIST, KMNIST and the
 * rest of the family, gzipped or not (zlib reads both).
 *
 * An IDX file is two zero bytes, a type byte (0x08 u8, 0x09 i8, 0x0B i16,
 * 0x0C i32, 0x0D f32, 0x0E f64), a rank byte, the rank dimensions as
 * big-endian u32, then the data, big-endian and row-major.  Images are u8
 * of rank 3 (N, H, W) or 4 (N, H, W, C); labels are integers of rank 1 (N).
 *
 *     d2v_idx im, lb;
 *     d2v_idx_load(&im, "train-images-idx3-ubyte.gz", &err);
 *     d2v_idx_images(&im, &n, &h, &w, &c, &err);
 *     const uint8_t *img7 = d2v_idx_image(&im, 7);  // img7 is (H, W, C)
 *     d2v_idx_load(&lb, "train-labels-idx1-ubyte.gz", &err);
 *     d2v_idx_labels(&lb, n, &err);                 // rank 1, N entries
 *     int64_t y7 = d2v_idx_label(&lb, 7);
 */
#ifndef D2V_INPUT_IDX_H
#define D2V_INPUT_IDX_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tensor.h"

enum d2v_idx_type {
	D2V_IDX_U8 = 0x08,
	D2V_IDX_I8 = 0x09,
	D2V_IDX_I16 = 0x0B,
	D2V_IDX_I32 = 0x0C,
	D2V_IDX_F32 = 0x0D,
	D2V_IDX_F64 = 0x0E,
};

typedef struct d2v_idx {
	int type;                     /* enum d2v_idx_type */
	int rank;                     /* 1..D2V_MAX_RANK */
	int64_t dims[D2V_MAX_RANK];   /* dims[0..rank-1] */
	uint8_t *data;                /* data is (dims...), as stored (big-endian) */
	size_t nbytes;
} d2v_idx;

/* Reads a whole archive.  A bad magic, a short read (truncated) or a
 * gzip error is an error naming the byte offset; memory grows with the
 * data actually read, so a lying header costs nothing. */
int d2v_idx_load(d2v_idx *x, const char *path, d2v_err *err);
void d2v_idx_free(d2v_idx *x);

/* Checks x holds u8 images: N, H, W and C (1 for rank 3). */
int d2v_idx_images(const d2v_idx *x, int64_t *n, int *h, int *w, int *c,
    d2v_err *err);
/* Image i: (H, W, C), borrowed. */
const uint8_t *d2v_idx_image(const d2v_idx *x, int64_t i);

/* Checks x holds n integer labels (rank 1). */
int d2v_idx_labels(const d2v_idx *x, int64_t n, d2v_err *err);
/* Label i. */
int64_t d2v_idx_label(const d2v_idx *x, int64_t i);

#endif
