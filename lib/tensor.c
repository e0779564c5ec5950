/* tensor.c - see tensor.h. */
#include "tensor.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "d2v streams are little-endian; this port assumes a little-endian host"
#endif

static const struct {
	const char *name;
	size_t size;
} dtypes[D2V_DTYPE_COUNT] = {
	[D2V_DTYPE_U8] = {"u8", 1},   [D2V_DTYPE_I32] = {"i32", 4},
	[D2V_DTYPE_I64] = {"i64", 8}, [D2V_DTYPE_F16] = {"f16", 2},
	[D2V_DTYPE_BF16] = {"bf16", 2}, [D2V_DTYPE_F32] = {"f32", 4},
};

const char *
d2v_dtype_name(d2v_dtype dt)
{
	return (unsigned)dt < D2V_DTYPE_COUNT ? dtypes[dt].name : NULL;
}

size_t
d2v_dtype_size(d2v_dtype dt)
{
	return (unsigned)dt < D2V_DTYPE_COUNT ? dtypes[dt].size : 0;
}

int
d2v_dtype_is_float(d2v_dtype dt)
{
	return dt == D2V_DTYPE_F16 || dt == D2V_DTYPE_BF16 || dt == D2V_DTYPE_F32;
}

int
d2v_dtype_parse(const char *name, size_t len, d2v_dtype *dt)
{
	for (int i = 0; i < D2V_DTYPE_COUNT; i++) {
		if (strlen(dtypes[i].name) == len &&
		    memcmp(dtypes[i].name, name, len) == 0) {
			*dt = (d2v_dtype)i;
			return 0;
		}
	}
	return D2V_EFORMAT;
}

size_t
d2v_tensor_limit(void)
{
	const char *s = getenv("D2V_MAX_TENSOR");
	char *end;
	unsigned long long v;

	if (s == NULL || *s == '\0')
		return D2V_MAX_TENSOR_DEFAULT;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || end == s)
		return D2V_MAX_TENSOR_DEFAULT;
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	}
	if (*end != '\0')
		return D2V_MAX_TENSOR_DEFAULT;
	return (size_t)v;
}

int
d2v_tensor_check(d2v_dtype dt, int rank, const int64_t *shape, size_t nbytes,
    size_t limit, d2v_err *err)
{
	uint64_t n = 1, bytes;

	if ((unsigned)dt >= D2V_DTYPE_COUNT)
		return d2v_err_set(err, D2V_EFORMAT, "invalid dtype %d", (int)dt);
	if (rank < 0 || rank > D2V_MAX_RANK)
		return d2v_err_set(err, D2V_ELIMIT,
		    "rank %d is above the limit of %d", rank, D2V_MAX_RANK);
	for (int i = 0; i < rank; i++) {
		if (shape[i] < 0)
			return d2v_err_set(err, D2V_EFORMAT,
			    "dimension %d is negative (%lld)", i,
			    (long long)shape[i]);
		if (__builtin_mul_overflow(n, (uint64_t)shape[i], &n))
			return d2v_err_set(err, D2V_ELIMIT,
			    "shape has more than 2^64 elements");
	}
	if (__builtin_mul_overflow(n, (uint64_t)dtypes[dt].size, &bytes))
		return d2v_err_set(err, D2V_ELIMIT,
		    "shape of %llu elements of %s overflows 2^64 bytes",
		    (unsigned long long)n, dtypes[dt].name);
	if (bytes > limit)
		return d2v_err_set(err, D2V_ELIMIT,
		    "tensor of %llu bytes is above the limit of %zu "
		    "(D2V_MAX_TENSOR)", (unsigned long long)bytes, limit);
	if (nbytes != (size_t)-1 && bytes != nbytes)
		return d2v_err_set(err, D2V_EFORMAT,
		    "data is %zu bytes, but %llu elements of %s need %llu",
		    nbytes, (unsigned long long)n, dtypes[dt].name,
		    (unsigned long long)bytes);
	return 0;
}

int
d2v_tensor_init(d2v_tensor *t, d2v_dtype dt, int rank, const int64_t *shape,
    d2v_err *err)
{
	int rc;

	memset(t, 0, sizeof *t);
	rc = d2v_tensor_check(dt, rank, shape, (size_t)-1, d2v_tensor_limit(),
	    err);
	if (rc < 0)
		return rc;
	t->dtype = dt;
	t->rank = rank;
	for (int i = 0; i < rank; i++)
		t->shape[i] = shape[i];
	t->nbytes = (size_t)d2v_tensor_numel(t) * dtypes[dt].size;
	if (t->nbytes > 0) {
		t->data = calloc(1, t->nbytes);
		if (t->data == NULL) {
			t->nbytes = 0;
			return d2v_err_set(err, D2V_ENOMEM,
			    "out of memory for a tensor of %zu bytes",
			    (size_t)d2v_tensor_numel(t) * dtypes[dt].size);
		}
	}
	return 0;
}

void
d2v_tensor_free(d2v_tensor *t)
{
	if (t == NULL)
		return;
	free(t->data);
	memset(t, 0, sizeof *t);
}

int64_t
d2v_tensor_numel(const d2v_tensor *t)
{
	int64_t n = 1;

	for (int i = 0; i < t->rank; i++)
		n *= t->shape[i];
	return n;
}

int
d2v_tensor_copy(d2v_tensor *dst, const d2v_tensor *src, d2v_err *err)
{
	int rc = d2v_tensor_init(dst, src->dtype, src->rank, src->shape, err);

	if (rc == 0 && src->nbytes > 0)
		memcpy(dst->data, src->data, src->nbytes);
	return rc;
}

int
d2v_tensor_equal(const d2v_tensor *a, const d2v_tensor *b)
{
	if (a->dtype != b->dtype || a->rank != b->rank ||
	    a->nbytes != b->nbytes)
		return 0;
	for (int i = 0; i < a->rank; i++)
		if (a->shape[i] != b->shape[i])
			return 0;
	return a->nbytes == 0 || memcmp(a->data, b->data, a->nbytes) == 0;
}

char *
d2v_tensor_shape_str(const d2v_tensor *t, char *buf, size_t size)
{
	size_t off = 0;

	if (size == 0)
		return buf;
	buf[0] = '\0';
	off += (size_t)snprintf(buf + off, size - off, "[");
	for (int i = 0; i < t->rank && off < size; i++)
		off += (size_t)snprintf(buf + off, size - off, "%s%lld",
		    i ? "," : "", (long long)t->shape[i]);
	if (off < size)
		snprintf(buf + off, size - off, "]");
	return buf;
}

/* IEEE binary16 <-> binary32, round to nearest even. */
uint16_t
d2v_f32_to_f16(float f)
{
	uint32_t x, sign, mant;
	int32_t exp;

	memcpy(&x, &f, 4);
	sign = (x >> 16) & 0x8000u;
	exp = (int32_t)((x >> 23) & 0xff);
	mant = x & 0x7fffffu;
	if (exp == 0xff) /* inf or nan (keep a quiet nan) */
		return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0));
	exp = exp - 127 + 15;
	if (exp >= 0x1f)
		return (uint16_t)(sign | 0x7c00u);
	if (exp <= 0) {
		uint32_t shift, half, r;

		if (exp < -10)
			return (uint16_t)sign;
		mant |= 0x800000u;
		shift = (uint32_t)(14 - exp);
		half = 1u << (shift - 1);
		r = mant >> shift;
		if ((mant & ((1u << shift) - 1)) > half ||
		    ((mant & ((1u << shift) - 1)) == half && (r & 1)))
			r++;
		return (uint16_t)(sign | r);
	}
	{
		uint32_t r = ((uint32_t)exp << 10) | (mant >> 13);
		uint32_t rem = mant & 0x1fffu;

		if (rem > 0x1000u || (rem == 0x1000u && (r & 1)))
			r++; /* may carry into the exponent, up to infinity */
		return (uint16_t)(sign | r);
	}
}

float
d2v_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, x;
	float f;

	if (exp == 0) {
		if (mant == 0) {
			x = sign;
		} else { /* subnormal: normalise */
			exp = 127 - 15 + 1;
			while ((mant & 0x400u) == 0) {
				mant <<= 1;
				exp--;
			}
			mant &= 0x3ffu;
			x = sign | (exp << 23) | (mant << 13);
		}
	} else if (exp == 0x1f) {
		x = sign | 0x7f800000u | (mant << 13);
	} else {
		x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
	}
	memcpy(&f, &x, 4);
	return f;
}

double
d2v_tensor_get(const d2v_tensor *t, int64_t i)
{
	switch (t->dtype) {
	case D2V_DTYPE_U8: return ((const uint8_t *)t->data)[i];
	case D2V_DTYPE_I32: return ((const int32_t *)t->data)[i];
	case D2V_DTYPE_I64: return (double)((const int64_t *)t->data)[i];
	case D2V_DTYPE_F16: return d2v_f16_to_f32(((const uint16_t *)t->data)[i]);
	case D2V_DTYPE_BF16: return d2v_bf16_to_f32(((const uint16_t *)t->data)[i]);
	case D2V_DTYPE_F32: return ((const float *)t->data)[i];
	default: return NAN;
	}
}

void
d2v_tensor_to_f32(const d2v_tensor *t, float *out)
{
	int64_t n = d2v_tensor_numel(t);

	if (t->dtype == D2V_DTYPE_F32) {
		if (n > 0)
			memcpy(out, t->data, (size_t)n * 4);
		return;
	}
	for (int64_t i = 0; i < n; i++)
		out[i] = (float)d2v_tensor_get(t, i);
}

static double
clampround(double v, double lo, double hi)
{
	if (isnan(v))
		return 0;
	v = nearbyint(v);
	return v < lo ? lo : v > hi ? hi : v;
}

int
d2v_tensor_convert(d2v_tensor *dst, const d2v_tensor *src, d2v_dtype dt,
    d2v_err *err)
{
	int64_t n = d2v_tensor_numel(src);
	int rc;

	if (dt == src->dtype)
		return d2v_tensor_copy(dst, src, err);
	rc = d2v_tensor_init(dst, dt, src->rank, src->shape, err);
	if (rc < 0)
		return rc;
	for (int64_t i = 0; i < n; i++) {
		double v = d2v_tensor_get(src, i);

		switch (dt) {
		case D2V_DTYPE_U8:
			((uint8_t *)dst->data)[i] = (uint8_t)clampround(v, 0, 255);
			break;
		case D2V_DTYPE_I32:
			((int32_t *)dst->data)[i] = (int32_t)clampround(v,
			    -2147483648.0, 2147483647.0);
			break;
		case D2V_DTYPE_I64:
			((int64_t *)dst->data)[i] = src->dtype == D2V_DTYPE_I64 ?
			    ((const int64_t *)src->data)[i] :
			    (int64_t)clampround(v, -9.2233720368547758e18,
			    9.2233720368547748e18);
			break;
		case D2V_DTYPE_F16:
			((uint16_t *)dst->data)[i] = d2v_f32_to_f16((float)v);
			break;
		case D2V_DTYPE_BF16:
			((uint16_t *)dst->data)[i] = d2v_f32_to_bf16((float)v);
			break;
		case D2V_DTYPE_F32:
			((float *)dst->data)[i] = (float)v;
			break;
		default:
			break;
		}
	}
	return 0;
}

/* Accumulates in blocks with Welford-style merging so large tensors keep
 * precision: each block's sum and sum of squares about its own mean. */
#define STATS_BLOCK 4096

static void
stats_merge(d2v_stats *s, double *m2, int64_t n, double mean, double bm2)
{
	int64_t tot = s->n + n;
	double d = mean - s->mean;

	if (n == 0)
		return;
	*m2 += bm2 + d * d * (double)s->n * (double)n / (double)tot;
	s->mean += d * (double)n / (double)tot;
	s->n = tot;
}

void
d2v_tensor_stats(const d2v_tensor *t, d2v_stats *s)
{
	int64_t n = d2v_tensor_numel(t);
	double m2 = 0;
	float buf[STATS_BLOCK];

	memset(s, 0, sizeof *s);
	s->min = INFINITY;
	s->max = -INFINITY;
	for (int64_t b = 0; b < n; b += STATS_BLOCK) {
		int64_t len = n - b < STATS_BLOCK ? n - b : STATS_BLOCK, k = 0;
		double sum = 0, mean, bm2 = 0, lo = s->min, hi = s->max;

		if (t->dtype == D2V_DTYPE_I64) { /* exact for big integers */
			const int64_t *p = (const int64_t *)t->data + b;
			double vals[STATS_BLOCK];

			for (int64_t i = 0; i < len; i++)
				vals[i] = (double)p[i];
			for (int64_t i = 0; i < len; i++)
				sum += vals[i];
			mean = sum / (double)len;
			for (int64_t i = 0; i < len; i++) {
				bm2 += (vals[i] - mean) * (vals[i] - mean);
				lo = vals[i] < lo ? vals[i] : lo;
				hi = vals[i] > hi ? vals[i] : hi;
			}
			k = len;
		} else {
			if (t->dtype == D2V_DTYPE_F32) {
				memcpy(buf, (const float *)t->data + b,
				    (size_t)len * 4);
			} else if (t->dtype == D2V_DTYPE_U8) {
				const uint8_t *p = (const uint8_t *)t->data + b;

				for (int64_t i = 0; i < len; i++)
					buf[i] = p[i];
			} else {
				for (int64_t i = 0; i < len; i++)
					buf[i] = (float)d2v_tensor_get(t, b + i);
			}
			for (int64_t i = 0; i < len; i++) {
				if (isfinite(buf[i])) {
					buf[k++] = buf[i];
					sum += buf[i];
				}
			}
			s->nonfinite += len - k;
			if (k == 0)
				continue;
			mean = sum / (double)k;
			for (int64_t i = 0; i < k; i++) {
				double d = buf[i] - mean;

				bm2 += d * d;
				lo = buf[i] < lo ? buf[i] : lo;
				hi = buf[i] > hi ? buf[i] : hi;
			}
		}
		s->min = lo;
		s->max = hi;
		stats_merge(s, &m2, k, mean, bm2);
	}
	if (s->n == 0) {
		s->min = s->max = s->mean = s->std = NAN;
		return;
	}
	s->std = sqrt(m2 / (double)s->n);
}
