/* idx.c - IDX archives through zlib; see idx.h. */
#include "input/idx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

static size_t
type_size(int type)
{
	switch (type) {
	case D2V_IDX_U8: case D2V_IDX_I8: return 1;
	case D2V_IDX_I16: return 2;
	case D2V_IDX_I32: case D2V_IDX_F32: return 4;
	case D2V_IDX_F64: return 8;
	default: return 0;
	}
}

/* Reads exactly n bytes at *off; 0, or an error naming what was short. */
static int
read_full(gzFile f, void *buf, size_t n, uint64_t *off, const char *what,
    d2v_err *err)
{
	size_t got = 0;

	while (got < n) {
		unsigned chunk = n - got > (1u << 30) ? 1u << 30 :
		    (unsigned)(n - got);
		int r = gzread(f, (char *)buf + got, chunk);

		if (r < 0) {
			int zerr;
			const char *m = gzerror(f, &zerr);

			return d2v_err_set(err, D2V_EFORMAT, "byte %llu: %s",
			    (unsigned long long)(*off + got),
			    zerr == Z_ERRNO ? strerror(errno) : m);
		}
		if (r == 0)
			return d2v_err_set(err, D2V_ETRUNC, "truncated at byte "
			    "%llu, inside the %s", (unsigned long long)(*off +
			    got), what);
		got += (size_t)r;
	}
	*off += n;
	return 0;
}

/* Reads the header into x and returns the data size in *nbytes. */
static int
read_header(gzFile f, d2v_idx *x, size_t *nbytes, uint64_t *off,
    d2v_err *err)
{
	unsigned char m[4], d[4];
	size_t total;
	int rc;

	if ((rc = read_full(f, m, 4, off, "magic number", err)) < 0)
		return rc;
	if (m[0] != 0 || m[1] != 0 || type_size(m[2]) == 0 || m[3] < 1 ||
	    m[3] > D2V_MAX_RANK)
		return d2v_err_set(err, D2V_EFORMAT, "not an IDX file (magic "
		    "%02x %02x %02x %02x)", m[0], m[1], m[2], m[3]);
	x->type = m[2];
	x->rank = m[3];
	total = type_size(x->type);
	for (int i = 0; i < x->rank; i++) {
		if ((rc = read_full(f, d, 4, off, "dimensions", err)) < 0)
			return rc;
		x->dims[i] = (int64_t)d[0] << 24 | d[1] << 16 | d[2] << 8 |
		    d[3];
		if (x->dims[i] != 0 && total > SIZE_MAX / (size_t)x->dims[i])
			return d2v_err_set(err, D2V_ELIMIT, "IDX dimensions "
			    "overflow");
		total *= (size_t)x->dims[i];
	}
	*nbytes = total;
	return 0;
}

/* Reads nbytes of data, growing the buffer as bytes actually arrive. */
static int
read_data(gzFile f, d2v_idx *x, size_t nbytes, uint64_t *off, d2v_err *err)
{
	size_t cap = 0, got = 0;
	int rc;

	while (got < nbytes) {
		size_t step;

		if (got == cap) {
			size_t ncap = cap ? cap * 2 : (size_t)1 << 20;
			uint8_t *p;

			ncap = ncap > nbytes ? nbytes : ncap;
			if ((p = realloc(x->data, ncap)) == NULL)
				return d2v_err_set(err, D2V_ENOMEM, "out of "
				    "memory for %zu bytes", ncap);
			x->data = p;
			cap = ncap;
		}
		step = cap - got;
		if ((rc = read_full(f, x->data + got, step, off, "data",
		    err)) < 0)
			return rc;
		got += step;
	}
	x->nbytes = nbytes;
	return 0;
}

int
d2v_idx_load(d2v_idx *x, const char *path, d2v_err *err)
{
	gzFile f;
	size_t nbytes = 0;
	uint64_t off = 0;
	int rc;

	memset(x, 0, sizeof *x);
	if ((f = gzopen(path, "rb")) == NULL)
		return d2v_err_set(err, D2V_EIO, "open %s: %s", path,
		    errno ? strerror(errno) : "out of memory");
	gzbuffer(f, 1 << 17);
	rc = read_header(f, x, &nbytes, &off, err);
	if (rc == 0)
		rc = read_data(f, x, nbytes, &off, err);
	gzclose(f);
	if (rc < 0) {
		d2v_err_prefix(err, "%s", path);
		d2v_idx_free(x);
	}
	return rc;
}

void
d2v_idx_free(d2v_idx *x)
{
	free(x->data);
	memset(x, 0, sizeof *x);
}

int
d2v_idx_images(const d2v_idx *x, int64_t *n, int *h, int *w, int *c,
    d2v_err *err)
{
	if (x->type != D2V_IDX_U8 || (x->rank != 3 && x->rank != 4))
		return d2v_err_set(err, D2V_EFORMAT, "IDX images must be u8 "
		    "of rank 3 (N, H, W) or 4 (N, H, W, C); this is type "
		    "0x%02x of rank %d", x->type, x->rank);
	if (x->dims[1] < 1 || x->dims[1] > 65535 || x->dims[2] < 1 ||
	    x->dims[2] > 65535 || (x->rank == 4 && x->dims[3] != 1 &&
	    x->dims[3] != 3))
		return d2v_err_set(err, D2V_EFORMAT, "IDX images of %lld x "
		    "%lld%s are out of range", (long long)x->dims[2],
		    (long long)x->dims[1], x->rank == 4 ? " x C" : "");
	*n = x->dims[0];
	*h = (int)x->dims[1];
	*w = (int)x->dims[2];
	*c = x->rank == 4 ? (int)x->dims[3] : 1;
	return 0;
}

const uint8_t *
d2v_idx_image(const d2v_idx *x, int64_t i)
{
	size_t per = x->nbytes / (size_t)(x->dims[0] ? x->dims[0] : 1);

	return x->data + (size_t)i * per;
}

int
d2v_idx_labels(const d2v_idx *x, int64_t n, d2v_err *err)
{
	if (x->rank != 1 || x->type == D2V_IDX_F32 || x->type == D2V_IDX_F64)
		return d2v_err_set(err, D2V_EFORMAT, "IDX labels must be "
		    "integers of rank 1; this is type 0x%02x of rank %d",
		    x->type, x->rank);
	if (x->dims[0] != n)
		return d2v_err_set(err, D2V_EMISMATCH, "%lld labels for %lld "
		    "images", (long long)x->dims[0], (long long)n);
	return 0;
}

int64_t
d2v_idx_label(const d2v_idx *x, int64_t i)
{
	const uint8_t *p = x->data + (size_t)i * type_size(x->type);

	switch (x->type) {
	case D2V_IDX_U8: return p[0];
	case D2V_IDX_I8: return (int8_t)p[0];
	case D2V_IDX_I16: return (int16_t)(p[0] << 8 | p[1]);
	default:
		return (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
		    (uint32_t)p[2] << 8 | p[3]);
	}
}
