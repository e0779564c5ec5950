/*
 * tensor.h - a dense, row-major, little-endian tensor with an owned buffer.
 *
 * A tensor is what the stream carries under a record's names (x, mask,
 * target...): a dtype, a shape of rank 0 to 8 and the bytes.  The shape's
 * product times the dtype size is always the byte length; d2v_tensor_check()
 * proves that, and that the size is under the limit, before anything is
 * allocated.
 *
 *     int64_t shape[2] = {16, 196};               // M copies x N tokens
 *     d2v_tensor mask;
 *     if (d2v_tensor_init(&mask, D2V_DTYPE_U8, 2, shape, &err) < 0) ...
 *     uint8_t *m = mask.data;                       // m is (M, N)
 *     d2v_tensor_free(&mask);
 *
 * f16 and bf16 are stored as uint16_t bit patterns and converted with
 * round-to-nearest-even; NaN stays NaN and overflow becomes infinity.
 */
#ifndef D2V_TENSOR_H
#define D2V_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "err.h"

#define D2V_MAX_RANK 8
/* Default for D2V_MAX_TENSOR: the largest tensor a reader accepts, in bytes. */
#define D2V_MAX_TENSOR_DEFAULT ((size_t)1 << 30)

typedef enum d2v_dtype {
	D2V_DTYPE_U8,
	D2V_DTYPE_I32,
	D2V_DTYPE_I64,
	D2V_DTYPE_F16,
	D2V_DTYPE_BF16,
	D2V_DTYPE_F32,
	D2V_DTYPE_COUNT
} d2v_dtype;

typedef struct d2v_tensor {
	d2v_dtype dtype;
	int rank;                      /* 0..D2V_MAX_RANK; rank 0 is a scalar */
	int64_t shape[D2V_MAX_RANK];   /* shape[0..rank-1], each >= 0 */
	void *data;                    /* nbytes, owned; NULL when nbytes is 0 */
	size_t nbytes;                 /* numel * dtype size */
} d2v_tensor;

/* "u8", "i32", "i64", "f16", "bf16", "f32"; NULL for an invalid dtype. */
const char *d2v_dtype_name(d2v_dtype dt);
/* Parses a dtype name; returns 0, or D2V_EFORMAT for an unknown name. */
int d2v_dtype_parse(const char *name, size_t len, d2v_dtype *dt);
/* Bytes per element: 1, 4, 8, 2, 2, 4. */
size_t d2v_dtype_size(d2v_dtype dt);
/* True for f16, bf16 and f32. */
int d2v_dtype_is_float(d2v_dtype dt);

/* The largest tensor accepted, from D2V_MAX_TENSOR (bytes, suffix K, M or G
 * allowed) or D2V_MAX_TENSOR_DEFAULT when unset or unparsable. */
size_t d2v_tensor_limit(void);

/*
 * Validates a tensor description before any allocation: rank <= 8, every
 * dimension >= 0, no overflow in the element count, count * dtype size ==
 * nbytes (skipped when nbytes is (size_t)-1) and <= limit.  Returns 0 or
 * D2V_EFORMAT / D2V_ELIMIT with a message naming the problem.
 */
int d2v_tensor_check(d2v_dtype dt, int rank, const int64_t *shape,
    size_t nbytes, size_t limit, d2v_err *err);

/* Allocates a zeroed tensor of the given dtype and shape (checked as above,
 * against d2v_tensor_limit()). */
int d2v_tensor_init(d2v_tensor *t, d2v_dtype dt, int rank,
    const int64_t *shape, d2v_err *err);
/* Frees the data and zeroes the struct; safe on a zeroed struct. */
void d2v_tensor_free(d2v_tensor *t);
/* Number of elements (1 for rank 0). */
int64_t d2v_tensor_numel(const d2v_tensor *t);
/* Deep copy into dst (uninitialised). */
int d2v_tensor_copy(d2v_tensor *dst, const d2v_tensor *src, d2v_err *err);
/* True when dtype, rank, shape and bytes are all equal. */
int d2v_tensor_equal(const d2v_tensor *a, const d2v_tensor *b);
/* Writes "[16,196]" into buf (always NUL-terminated); returns buf. */
char *d2v_tensor_shape_str(const d2v_tensor *t, char *buf, size_t size);

/* Element i of any dtype as a double. */
double d2v_tensor_get(const d2v_tensor *t, int64_t i);
/* Converts all elements to f32: out is (numel). Integers convert exactly up to 2^24. */
void d2v_tensor_to_f32(const d2v_tensor *t, float *out);
/* Makes dst (uninitialised) a copy of src converted to dtype dt. Float to
 * integer conversion rounds to nearest and saturates. */
int d2v_tensor_convert(d2v_tensor *dst, const d2v_tensor *src, d2v_dtype dt,
    d2v_err *err);

/* Summary statistics over the finite elements: min, max, mean, population
 * standard deviation; nonfinite counts NaN and infinities.  Zero elements
 * give n = 0 and NaN statistics. */
typedef struct d2v_stats {
	double min, max, mean, std;
	int64_t n;          /* finite elements */
	int64_t nonfinite;  /* NaN or infinite elements */
} d2v_stats;
void d2v_tensor_stats(const d2v_tensor *t, d2v_stats *s);

/* Half-precision conversions (bit patterns in uint16_t). */
uint16_t d2v_f32_to_f16(float f);
float d2v_f16_to_f32(uint16_t h);

/* bf16: round to nearest even, NaN kept quiet; inline so that loops over
 * arrays vectorise (the bf16 backend rounds every product's operands) */
static inline uint16_t
d2v_f32_to_bf16(float f)
{
	uint32_t x;

	memcpy(&x, &f, 4);
	if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu))
		return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
	x += 0x7fffu + ((x >> 16) & 1u);
	return (uint16_t)(x >> 16);
}

static inline float
d2v_bf16_to_f32(uint16_t h)
{
	uint32_t x = (uint32_t)h << 16;
	float f;

	memcpy(&f, &x, 4);
	return f;
}

#endif
