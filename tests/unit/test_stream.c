/* test_stream.c - the tensor stream: round trips, concatenation, bad input. */
#include <fcntl.h>
#include <signal.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <msgpack.h>

#include "stream.h"
#include "t.h"

/* ---- helpers ------------------------------------------------------------ */

typedef struct {
	unsigned char *buf;
	size_t len;
} blob;

static int
tmpfd(void)
{
	return memfd_create("d2v-test", 0);
}

static blob
slurp(int fd)
{
	blob b = {0};
	off_t n = lseek(fd, 0, SEEK_END);

	b.buf = malloc((size_t)n + 1);
	b.len = (size_t)n;
	if (pread(fd, b.buf, b.len, 0) != (ssize_t)b.len)
		abort();
	return b;
}

static void
fill_tensor(d2v_tensor *t, unsigned seed)
{
	unsigned char *p = t->data;

	for (size_t i = 0; i < t->nbytes; i++)
		p[i] = (unsigned char)(seed * 31 + i * 7 + (i >> 3));
}

/* Writes a stream of n records (x tensor of dtype/rank cycling) to fd and,
 * when ends is given, the byte offset of the end of each object. */
static void
write_sample(int fd, int n, const char *modality, size_t *ends)
{
	d2v_writer *w;
	d2v_err err = {0};
	json_t *h = d2v_header_new(modality);
	int k = 0;

	d2v_header_add_stage(h, "tokenize", json_pack("{s:i}", "size", 8), &err);
	d2v_writer_open_fd(&w, fd, "mem", &err);
	d2v_writer_header(w, h, &err);
	d2v_writer_flush(w, &err);
	if (ends)
		ends[k++] = (size_t)lseek(fd, 0, SEEK_CUR);
	for (int i = 0; i < n; i++) {
		d2v_record rec;
		d2v_tensor t;
		int64_t shape[3] = {2, 3, i + 1};
		char id[32];

		d2v_record_init(&rec);
		snprintf(id, sizeof id, "rec:%d", i);
		d2v_record_set_id(&rec, id, &err);
		d2v_tensor_init(&t, (d2v_dtype)(i % D2V_DTYPE_COUNT), 3, shape, &err);
		fill_tensor(&t, (unsigned)i);
		d2v_record_set_tensor(&rec, "x", &t, &err);
		d2v_record_set_int(&rec, "label", i % 10, &err);
		d2v_writer_record(w, &rec, &err);
		d2v_writer_flush(w, &err);
		if (ends)
			ends[k++] = (size_t)lseek(fd, 0, SEEK_CUR);
		d2v_record_clear(&rec);
	}
	d2v_writer_end(w, &err);
	if (ends)
		ends[k++] = (size_t)lseek(fd, 0, SEEK_CUR);
	d2v_writer_free(w);
	json_decref(h);
}

/* Reads all records of a buffer; returns the final code, *n records. */
static int
read_all(const void *buf, size_t len, int64_t *n, d2v_err *err)
{
	d2v_reader *r;
	d2v_record rec;
	int rc;

	*n = 0;
	d2v_record_init(&rec);
	if (d2v_reader_open_mem(&r, buf, len, "mem", err) < 0)
		return err->code;
	while ((rc = d2v_reader_next(r, &rec, err)) > 0)
		(*n)++;
	d2v_record_clear(&rec);
	d2v_reader_free(r);
	return rc;
}

/* Packs one msgpack object (built by fn) after a valid header. */
typedef void (*packfn)(msgpack_packer *pk);

static void
pk_str(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void
pk_header(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 5);
	pk_str(pk, "d2v"); msgpack_pack_int(pk, 1);
	pk_str(pk, "type"); pk_str(pk, "header");
	pk_str(pk, "modality"); pk_str(pk, "image");
	pk_str(pk, "stages"); msgpack_pack_array(pk, 0);
	pk_str(pk, "meta"); msgpack_pack_map(pk, 0);
}

static int
read_packed(packfn before, packfn obj, d2v_err *err, int64_t *n)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int rc;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	if (before)
		before(&pk);
	obj(&pk);
	rc = read_all(sb.data, sb.size, n, err);
	msgpack_sbuffer_destroy(&sb);
	return rc;
}

static void
pk_tensor_rec(msgpack_packer *pk, const char *dtype, int rank,
    const uint64_t *shape, size_t datalen)
{
	static const char zeros[64];

	msgpack_pack_map(pk, 3);
	pk_str(pk, "type"); pk_str(pk, "record");
	pk_str(pk, "id"); pk_str(pk, "bad");
	pk_str(pk, "x");
	msgpack_pack_map(pk, 3);
	pk_str(pk, "dtype"); pk_str(pk, dtype);
	pk_str(pk, "shape"); msgpack_pack_array(pk, (size_t)rank);
	for (int i = 0; i < rank; i++)
		msgpack_pack_uint64(pk, shape[i]);
	pk_str(pk, "data"); msgpack_pack_bin(pk, datalen);
	msgpack_pack_bin_body(pk, zeros, datalen);
}

static void pk_huge(msgpack_packer *pk)
{
	uint64_t s[2] = {1ull << 30, 1ull << 30};
	pk_tensor_rec(pk, "f32", 2, s, 4);
}
static void pk_mismatch(msgpack_packer *pk)
{
	uint64_t s[2] = {2, 3};
	pk_tensor_rec(pk, "f32", 2, s, 20);
}
static void pk_baddtype(msgpack_packer *pk)
{
	uint64_t s[1] = {4};
	pk_tensor_rec(pk, "f128", 1, s, 16);
}
static void pk_rank9(msgpack_packer *pk)
{
	uint64_t s[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
	pk_tensor_rec(pk, "u8", 9, s, 1);
}
static void pk_limit(msgpack_packer *pk)
{
	uint64_t s[1] = {16};
	pk_tensor_rec(pk, "f32", 1, s, 64);
}
static void pk_hugearray(msgpack_packer *pk)
{
	static const char claim[] = {(char)0xdd, (char)0xff, (char)0xff,
	    (char)0xff, (char)0xff, 1, 2, 3};

	msgpack_pack_map(pk, 3);
	pk_str(pk, "type"); pk_str(pk, "record");
	pk_str(pk, "id"); pk_str(pk, "huge");
	pk_str(pk, "a");
	msgpack_pack_bin_body(pk, claim, sizeof claim); /* raw bytes */
}
static void pk_hugebin(msgpack_packer *pk)
{
	static const char claim[] = {(char)0xc6, (char)0xf0, 0, 0, 0, 1, 2, 3};

	msgpack_pack_map(pk, 3);
	pk_str(pk, "type"); pk_str(pk, "record");
	pk_str(pk, "id"); pk_str(pk, "huge");
	pk_str(pk, "a");
	msgpack_pack_bin_body(pk, claim, sizeof claim);
}
static void pk_nonmap(msgpack_packer *pk) { msgpack_pack_array(pk, 2); msgpack_pack_int(pk, 1); msgpack_pack_int(pk, 2); }
static void pk_record_only(msgpack_packer *pk)
{
	uint64_t s[1] = {4};
	pk_tensor_rec(pk, "u8", 1, s, 4);
}
static void pk_version2(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 5);
	pk_str(pk, "d2v"); msgpack_pack_int(pk, 2);
	pk_str(pk, "type"); pk_str(pk, "header");
	pk_str(pk, "modality"); pk_str(pk, "image");
	pk_str(pk, "stages"); msgpack_pack_array(pk, 0);
	pk_str(pk, "meta"); msgpack_pack_map(pk, 0);
}
static void pk_badcount(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 2);
	pk_str(pk, "type"); pk_str(pk, "end");
	pk_str(pk, "records"); msgpack_pack_int(pk, 5);
}
static void pk_notmsgpack(msgpack_packer *pk)
{
	static const char junk[] = {(char)0xc1, 1, 2, 3};
	msgpack_pack_bin_body(pk, junk, sizeof junk); /* raw bytes: 0xc1 is never used */
}

/* ---- tests -------------------------------------------------------------- */

static void
test_roundtrip(void)
{
	int fd = tmpfd(), ok = 1;
	d2v_writer *w;
	d2v_reader *r;
	d2v_err err = {0};
	json_t *h = d2v_header_new("audio");
	d2v_record rec, in;
	int rc, nrec = 0;
	blob b;

	d2v_header_add_stage(h, "tokenize", json_pack("{s:i,s:f,s:[i,i]}",
	    "sample_rate", 16000, "scale", 0.5, "list", 1, 2), &err);
	d2v_writer_open_fd(&w, fd, "mem", &err);
	T_OK(d2v_writer_header(w, h, &err) == 0, "writer writes a header");
	for (int dt = 0; dt < D2V_DTYPE_COUNT; dt++) {
		for (int rank = 0; rank <= D2V_MAX_RANK; rank++) {
			int64_t shape[D2V_MAX_RANK];
			d2v_tensor t;
			char id[32];

			for (int i = 0; i < rank; i++)
				shape[i] = 1 + (i + dt) % 3;
			d2v_record_init(&rec);
			snprintf(id, sizeof id, "%s/%d", d2v_dtype_name(dt), rank);
			d2v_record_set_id(&rec, id, &err);
			if (d2v_tensor_init(&t, (d2v_dtype)dt, rank, shape, &err) < 0)
				ok = 0;
			fill_tensor(&t, (unsigned)(dt * 9 + rank));
			d2v_record_set_tensor(&rec, "x", &t, &err);
			d2v_record_set_int(&rec, "label", -rank, &err);
			d2v_record_set_str(&rec, "note", "hello", &err);
			if (d2v_writer_record(w, &rec, &err) < 0)
				ok = 0;
			d2v_record_clear(&rec);
		}
	}
	/* an empty tensor: shape [0, 5] */
	{
		int64_t shape[2] = {0, 5};
		d2v_tensor t;

		d2v_record_init(&rec);
		d2v_record_set_id(&rec, "empty", &err);
		d2v_tensor_init(&t, D2V_DTYPE_F32, 2, shape, &err);
		d2v_record_set_tensor(&rec, "x", &t, &err);
		d2v_writer_record(w, &rec, &err);
		d2v_record_clear(&rec);
	}
	T_OK(ok, "every dtype and rank 0..8 written");
	T_OK(d2v_writer_end(w, &err) == 0, "writer writes the trailer");
	d2v_writer_free(w);

	b = slurp(fd);
	lseek(fd, 0, SEEK_SET);
	T_OK(d2v_reader_open_fd(&r, fd, "memfd", &err) == 0, "reader opens");
	T_OK(d2v_reader_begin(r, &err) == 0, "reader reads the header");
	T_OK(json_equal(d2v_reader_header(r), h), "header round-trips as JSON");
	d2v_record_init(&in);
	ok = 1;
	for (int dt = 0; dt < D2V_DTYPE_COUNT; dt++) {
		for (int rank = 0; rank <= D2V_MAX_RANK; rank++) {
			int64_t shape[D2V_MAX_RANK], lab;
			d2v_tensor t, *x;
			char id[32];

			if (d2v_reader_next(r, &in, &err) != 1) {
				ok = 0;
				break;
			}
			nrec++;
			for (int i = 0; i < rank; i++)
				shape[i] = 1 + (i + dt) % 3;
			d2v_tensor_init(&t, (d2v_dtype)dt, rank, shape, &err);
			fill_tensor(&t, (unsigned)(dt * 9 + rank));
			snprintf(id, sizeof id, "%s/%d", d2v_dtype_name(dt), rank);
			x = d2v_record_tensor(&in, "x");
			if (x == NULL || !d2v_tensor_equal(x, &t) ||
			    strcmp(in.id, id) != 0 ||
			    !d2v_record_int(&in, "label", &lab) || lab != -rank ||
			    d2v_record_field(&in, "note") == NULL ||
			    strcmp(d2v_record_field(&in, "note")->s, "hello"))
				ok = 0;
			d2v_tensor_free(&t);
		}
	}
	T_OK(ok && nrec == D2V_DTYPE_COUNT * (D2V_MAX_RANK + 1),
	    "all %d records read back equal (dtype, shape, bytes, id, label)",
	    nrec);
	rc = d2v_reader_next(r, &in, &err);
	T_OK(rc == 1 && d2v_tensor_numel(d2v_record_tensor(&in, "x")) == 0,
	    "empty [0,5] tensor round-trips");
	rc = d2v_reader_next(r, &in, &err);
	T_OK(rc == 0, "clean end after the trailer (rc %d)", rc);
	T_OK(d2v_reader_offset(r) == b.len, "offset %llu equals the size %zu",
	    (unsigned long long)d2v_reader_offset(r), b.len);
	d2v_record_clear(&in);
	d2v_reader_free(r);
	free(b.buf);
	close(fd);
	json_decref(h);
}

static void
pk_unknown_keys(msgpack_packer *pk)
{
	pk_header(pk);
	msgpack_pack_map(pk, 6);
	pk_str(pk, "type"); pk_str(pk, "record");
	pk_str(pk, "id"); pk_str(pk, "u");
	pk_str(pk, "weights"); msgpack_pack_array(pk, 3);
	msgpack_pack_double(pk, 0.25); msgpack_pack_true(pk); msgpack_pack_nil(pk);
	pk_str(pk, "extra"); msgpack_pack_map(pk, 1); pk_str(pk, "k"); pk_str(pk, "v");
	pk_str(pk, "blob"); msgpack_pack_bin(pk, 3); msgpack_pack_bin_body(pk, "abc", 3);
	pk_str(pk, "score"); msgpack_pack_float(pk, 1.5f);
	msgpack_pack_map(pk, 2);
	pk_str(pk, "type"); pk_str(pk, "end");
	pk_str(pk, "records"); msgpack_pack_int(pk, 1);
}

static void
test_passthrough(void)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	d2v_reader *r;
	d2v_writer *w;
	d2v_record rec, rec2;
	d2v_err err = {0};
	int fd = tmpfd();
	blob b;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	pk_unknown_keys(&pk);
	d2v_record_init(&rec);
	d2v_record_init(&rec2);
	d2v_reader_open_mem(&r, sb.data, sb.size, "mem", &err);
	T_OK(d2v_reader_next(r, &rec, &err) == 1 && rec.nfields == 4 &&
	    d2v_record_field(&rec, "weights")->kind == D2V_FIELD_RAW,
	    "unknown values are kept as raw fields");
	d2v_writer_open_fd(&w, fd, "mem", &err);
	d2v_writer_header(w, d2v_reader_header(r), &err);
	d2v_writer_record(w, &rec, &err);
	d2v_writer_end(w, &err);
	d2v_writer_free(w);
	d2v_reader_free(r);
	b = slurp(fd);
	d2v_reader_open_mem(&r, b.buf, b.len, "mem", &err);
	T_OK(d2v_reader_next(r, &rec2, &err) == 1, "rewritten record reads");
	{
		int same = rec.nfields == rec2.nfields;

		for (int i = 0; same && i < rec.nfields; i++) {
			d2v_field *a = &rec.fields[i], *c = &rec2.fields[i];

			same = strcmp(a->key, c->key) == 0 && a->kind == c->kind &&
			    a->rawlen == c->rawlen &&
			    (a->rawlen == 0 || memcmp(a->raw, c->raw, a->rawlen) == 0);
		}
		T_OK(same, "unknown keys pass through a rewrite byte for byte");
	}
	d2v_reader_free(r);
	d2v_record_clear(&rec);
	d2v_record_clear(&rec2);
	msgpack_sbuffer_destroy(&sb);
	free(b.buf);
	close(fd);
}

static void
test_truncation(void)
{
	enum { N = 7 };
	size_t ends[N + 2];
	int fd = tmpfd(), bad = 0;
	blob b;

	write_sample(fd, N, "image", ends);
	b = slurp(fd);
	for (size_t len = 0; len <= b.len; len++) {
		int64_t n, expect = 0;
		d2v_err err = {0};
		int rc = read_all(b.buf, len, &n, &err);

		for (int i = 1; i <= N; i++)
			if (ends[i] <= len)
				expect++;
		if (len == b.len) {
			if (rc != 0 || n != N)
				bad++;
		} else if (len == 0) {
			if (rc != D2V_EEMPTY || n != 0)
				bad++;
		} else if (rc != D2V_ETRUNC || n != expect ||
		    strstr(err.msg, "truncated") == NULL) {
			if (bad++ < 3)
				printf("# prefix %zu: rc %d, %lld records "
				    "(expected %lld): %s\n", len, rc,
				    (long long)n, (long long)expect, err.msg);
		}
	}
	T_OK(bad == 0, "every prefix of a %zu-byte stream passes its whole "
	    "records and then fails with \"truncated\" (%d bad)", b.len, bad);
	free(b.buf);
	close(fd);
}

static void
test_flips(void)
{
	int fd = tmpfd(), survived = 0;
	blob b;
	unsigned seed = 12345;

	write_sample(fd, 5, "image", NULL);
	b = slurp(fd);
	for (int it = 0; it < 3000; it++) {
		unsigned char *c = malloc(b.len);
		int64_t n;
		d2v_err err = {0};

		memcpy(c, b.buf, b.len);
		for (int k = 0; k < 1 + it % 4; k++) {
			seed = seed * 1103515245u + 12345u;
			c[(seed >> 8) % b.len] ^= (unsigned char)(1u << ((seed >> 4) % 8));
		}
		(void)read_all(c, b.len, &n, &err);
		if (n <= 5)
			survived++;
		free(c);
	}
	T_OK(survived == 3000, "3000 streams with random bit flips: no crash, "
	    "no hang, never more records than written");
	free(b.buf);
	close(fd);
}

static void
test_bad(void)
{
	d2v_err err = {0};
	int64_t n;
	int rc;

	rc = read_all("", 0, &n, &err);
	T_OK(rc == D2V_EEMPTY && strstr(err.msg, "empty"), "empty input: %s", err.msg);
	rc = read_packed(pk_header, pk_huge, &err, &n);
	T_OK(rc == D2V_ELIMIT && strstr(err.msg, "limit"),
	    "2^60 elements refused before allocation: %s", err.msg);
	rc = read_packed(pk_header, pk_mismatch, &err, &n);
	T_OK(rc == D2V_EFORMAT && strstr(err.msg, "20 bytes"),
	    "data length not matching the shape: %s", err.msg);
	rc = read_packed(pk_header, pk_baddtype, &err, &n);
	T_OK(rc == D2V_EFORMAT && strstr(err.msg, "unknown dtype"),
	    "unknown dtype: %s", err.msg);
	rc = read_packed(pk_header, pk_rank9, &err, &n);
	T_OK(rc == D2V_ELIMIT && strstr(err.msg, "rank 9"), "rank 9: %s", err.msg);
	setenv("D2V_MAX_TENSOR", "32", 1);
	rc = read_packed(pk_header, pk_limit, &err, &n);
	T_OK(rc == D2V_ELIMIT && strstr(err.msg, "D2V_MAX_TENSOR"),
	    "D2V_MAX_TENSOR=32 refuses a 64-byte tensor: %s", err.msg);
	unsetenv("D2V_MAX_TENSOR");
	rc = read_packed(pk_header, pk_limit, &err, &n);
	T_OK(rc == D2V_ETRUNC && n == 1, "the same tensor passes without the limit");
	rc = read_packed(NULL, pk_record_only, &err, &n);
	T_OK(rc == D2V_EFORMAT && strstr(err.msg, "header"),
	    "record before the header: %s", err.msg);
	rc = read_packed(NULL, pk_nonmap, &err, &n);
	T_OK(rc == D2V_EFORMAT && strstr(err.msg, "not a map"),
	    "non-map object: %s", err.msg);
	rc = read_packed(NULL, pk_version2, &err, &n);
	T_OK(rc == D2V_EFORMAT && strstr(err.msg, "version"),
	    "unknown format version: %s", err.msg);
	rc = read_packed(pk_header, pk_badcount, &err, &n);
	T_OK(rc == D2V_EFORMAT && strstr(err.msg, "trailer says 5"),
	    "trailer count mismatch: %s", err.msg);
	rc = read_packed(pk_header, pk_notmsgpack, &err, &n);
	T_OK(rc == D2V_EFORMAT && strstr(err.msg, "msgpack"),
	    "bytes that are not msgpack: %s", err.msg);
	rc = read_packed(pk_header, pk_hugearray, &err, &n);
	T_OK(rc == D2V_ETRUNC, "an array claiming 2^32-1 elements backed by 3 "
	    "bytes is a truncated stream, not a 100 GB allocation: %s", err.msg);
	rc = read_packed(pk_header, pk_hugebin, &err, &n);
	T_OK(rc == D2V_EFORMAT && strstr(err.msg, "limit"),
	    "a 4 GB bin claim is refused before buffering: %s", err.msg);
	rc = read_packed(pk_header, pk_mismatch, &err, &n);
	T_OK(strstr(err.msg, "record 0") && strstr(err.msg, "byte "),
	    "messages name the record and byte offset: %s", err.msg);
}

static void
test_concat(void)
{
	int fd = tmpfd(), fd2 = tmpfd();
	d2v_err err = {0};
	int64_t n;
	int rc;
	blob a, c;

	write_sample(fd, 3, "image", NULL);
	write_sample(fd, 2, "image", NULL);
	a = slurp(fd);
	rc = read_all(a.buf, a.len, &n, &err);
	T_OK(rc == 0 && n == 5, "two concatenated streams read as one (%lld)",
	    (long long)n);
	write_sample(fd2, 3, "image", NULL);
	write_sample(fd2, 2, "audio", NULL);
	c = slurp(fd2);
	rc = read_all(c.buf, c.len, &n, &err);
	T_OK(rc == D2V_EMISMATCH && n == 3 && strstr(err.msg, "audio") &&
	    strstr(err.msg, "image"), "a header of another modality is "
	    "refused after the first stream's records: %s", err.msg);
	free(a.buf);
	free(c.buf);
	close(fd);
	close(fd2);
}

static void
test_writer_errors(void)
{
	int p[2], full = open("/dev/full", O_WRONLY);
	d2v_writer *w;
	d2v_err err = {0};
	json_t *h = d2v_header_new("text");
	int rc;

	if (pipe(p) == 0) {
		close(p[0]);
		signal(SIGPIPE, SIG_IGN);
		d2v_writer_open_fd(&w, p[1], "pipe", &err);
		d2v_writer_header(w, h, &err);
		rc = d2v_writer_end(w, &err);
		T_OK(rc == D2V_EIO && strstr(err.msg, "Broken pipe"),
		    "a closed pipe is a write error: %s", err.msg);
		rc = d2v_writer_flush(w, &err);
		T_OK(rc == D2V_EIO, "the error sticks");
		d2v_writer_free(w);
		close(p[1]);
	}
	if (full >= 0) {
		d2v_writer_open_fd(&w, full, "/dev/full", &err);
		d2v_writer_header(w, h, &err);
		rc = d2v_writer_end(w, &err);
		T_OK(rc == D2V_EIO && strstr(err.msg, "No space"),
		    "a full disk is a write error: %s", err.msg);
		d2v_writer_free(w);
		close(full);
	}
	json_decref(h);
}

/* A tensor between half the write buffer and the buffer, after buffered
 * bytes: the writer must flush those first (a bug once wrote it ahead). */
static void
test_mid_tensor(void)
{
	int fd = tmpfd(), ok = 1;
	d2v_writer *w;
	d2v_reader *r;
	d2v_record rec;
	d2v_err err = {0};
	json_t *h = d2v_header_new("image");
	int64_t sizes[3] = {10, 600000, 300000};
	blob b;

	d2v_writer_open_fd(&w, fd, "mem", &err);
	d2v_writer_header(w, h, &err);
	for (int i = 0; i < 3; i++) {
		d2v_tensor t;

		d2v_record_init(&rec);
		d2v_record_set_id(&rec, "mid", &err);
		d2v_tensor_init(&t, D2V_DTYPE_U8, 1, &sizes[i], &err);
		fill_tensor(&t, (unsigned)i);
		d2v_record_set_tensor(&rec, "x", &t, &err);
		d2v_writer_record(w, &rec, &err);
		d2v_record_clear(&rec);
	}
	d2v_writer_end(w, &err);
	d2v_writer_free(w);
	b = slurp(fd);
	d2v_reader_open_mem(&r, b.buf, b.len, "mem", &err);
	d2v_record_init(&rec);
	for (int i = 0; i < 3; i++) {
		d2v_tensor t, *x;

		d2v_tensor_init(&t, D2V_DTYPE_U8, 1, &sizes[i], &err);
		fill_tensor(&t, (unsigned)i);
		if (d2v_reader_next(r, &rec, &err) != 1 ||
		    (x = d2v_record_tensor(&rec, "x")) == NULL ||
		    !d2v_tensor_equal(x, &t))
			ok = 0;
		d2v_tensor_free(&t);
	}
	T_OK(ok && d2v_reader_next(r, &rec, &err) == 0, "tensors of 10 B, "
	    "600 KB and 300 KB after buffered bytes come back in order");
	d2v_record_clear(&rec);
	d2v_reader_free(r);
	free(b.buf);
	close(fd);
	json_decref(h);
}

static void
test_half(void)
{
	int bad16 = 0, badbf = 0, badcast = 0;
	unsigned seed = 7;

	for (uint32_t h = 0; h < 65536; h++) {
		float f = d2v_f16_to_f32((uint16_t)h);
		float g = d2v_bf16_to_f32((uint16_t)h);

		if (isnan(f) ? !isnan(d2v_f16_to_f32(d2v_f32_to_f16(f))) :
		    d2v_f32_to_f16(f) != h)
			bad16++;
		if (isnan(g) ? !isnan(d2v_bf16_to_f32(d2v_f32_to_bf16(g))) :
		    d2v_f32_to_bf16(g) != h)
			badbf++;
	}
	T_OK(bad16 == 0, "f16 -> f32 -> f16 is exact for all 65536 patterns");
	T_OK(badbf == 0, "bf16 -> f32 -> bf16 is exact for all 65536 patterns");
#ifdef __FLT16_MAX__
	for (int i = 0; i < 1000000; i++) {
		uint32_t x;
		float f;
		_Float16 ref;
		uint16_t rb;

		seed = seed * 1664525u + 1013904223u;
		x = seed;
		if (i % 2) /* concentrate on the f16 range */
			x = (x & 0x807fffffu) | ((uint32_t)(100 + (seed >> 24) % 50) << 23);
		memcpy(&f, &x, 4);
		if (isnan(f))
			continue;
		ref = (_Float16)f;
		memcpy(&rb, &ref, 2);
		if (d2v_f32_to_f16(f) != rb)
			badcast++;
	}
	T_OK(badcast == 0, "f32 -> f16 rounds as the compiler's _Float16 on 1e6 "
	    "values (%d differ)", badcast);
#endif
	T_OK(d2v_f32_to_bf16(1.00390625f) == 0x3f80 &&
	    d2v_f32_to_bf16(1.01171875f) == 0x3f82,
	    "bf16 rounds ties to even");
	T_OK(d2v_f32_to_f16(65520.0f) == 0x7c00 && d2v_f32_to_f16(1e-8f) == 0,
	    "f16 overflow gives inf, underflow gives 0");
}

int
main(void)
{
	test_roundtrip();
	test_passthrough();
	test_truncation();
	test_flips();
	test_bad();
	test_concat();
	test_writer_errors();
	test_mid_tensor();
	test_half();
	return T_DONE();
}
