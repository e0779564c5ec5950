/* stream.c - the tensor stream over msgpack-c; see stream.h and d2v-stream(5). */
#include "stream.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgpack.h>

#define READ_CHUNK ((size_t)1 << 20)
#define WRITE_BUF ((size_t)1 << 20)

/* ==== records =========================================================== */

void
d2v_record_init(d2v_record *rec)
{
	memset(rec, 0, sizeof *rec);
}

static void
field_free(d2v_field *f)
{
	free(f->key);
	d2v_tensor_free(&f->t);
	free(f->s);
	free(f->raw);
	memset(f, 0, sizeof *f);
}

void
d2v_record_clear(d2v_record *rec)
{
	for (int i = 0; i < rec->nfields; i++)
		field_free(&rec->fields[i]);
	free(rec->fields);
	free(rec->id);
	d2v_record_init(rec);
}

static char *
xstrndup(const char *s, size_t n)
{
	char *p = malloc(n + 1);

	if (p != NULL) {
		memcpy(p, s, n);
		p[n] = '\0';
	}
	return p;
}

int
d2v_record_set_id(d2v_record *rec, const char *id, d2v_err *err)
{
	size_t n = strlen(id);
	char *p = xstrndup(id, n);

	if (p == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	free(rec->id);
	rec->id = p;
	rec->id_len = n;
	return 0;
}

d2v_field *
d2v_record_field(const d2v_record *rec, const char *key)
{
	for (int i = 0; i < rec->nfields; i++)
		if (strcmp(rec->fields[i].key, key) == 0)
			return &rec->fields[i];
	return NULL;
}

d2v_tensor *
d2v_record_tensor(const d2v_record *rec, const char *key)
{
	d2v_field *f = d2v_record_field(rec, key);

	return f != NULL && f->kind == D2V_FIELD_TENSOR ? &f->t : NULL;
}

int
d2v_record_int(const d2v_record *rec, const char *key, int64_t *out)
{
	d2v_field *f = d2v_record_field(rec, key);

	if (f == NULL || f->kind != D2V_FIELD_INT)
		return 0;
	*out = f->i;
	return 1;
}

/* Returns a cleared field named key (existing or appended), or NULL. */
static d2v_field *
field_slot(d2v_record *rec, const char *key, size_t keylen)
{
	d2v_field *f;

	for (int i = 0; i < rec->nfields; i++) {
		f = &rec->fields[i];
		if (strlen(f->key) == keylen && memcmp(f->key, key, keylen) == 0) {
			char *k = f->key;

			f->key = NULL;
			field_free(f);
			f->key = k;
			return f;
		}
	}
	if (rec->nfields == rec->cap) {
		int cap = rec->cap ? rec->cap * 2 : 8;
		d2v_field *nf = realloc(rec->fields, (size_t)cap * sizeof *nf);

		if (nf == NULL)
			return NULL;
		rec->fields = nf;
		rec->cap = cap;
	}
	f = &rec->fields[rec->nfields];
	memset(f, 0, sizeof *f);
	f->key = xstrndup(key, keylen);
	if (f->key == NULL)
		return NULL;
	rec->nfields++;
	return f;
}

int
d2v_record_set_tensor(d2v_record *rec, const char *key, d2v_tensor *t,
    d2v_err *err)
{
	d2v_field *f = field_slot(rec, key, strlen(key));

	if (f == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	f->kind = D2V_FIELD_TENSOR;
	f->t = *t;
	memset(t, 0, sizeof *t);
	return 0;
}

int
d2v_record_set_int(d2v_record *rec, const char *key, int64_t v, d2v_err *err)
{
	d2v_field *f = field_slot(rec, key, strlen(key));

	if (f == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	f->kind = D2V_FIELD_INT;
	f->i = v;
	return 0;
}

int
d2v_record_set_str(d2v_record *rec, const char *key, const char *s,
    d2v_err *err)
{
	d2v_field *f = field_slot(rec, key, strlen(key));

	if (f == NULL || (f->s = xstrndup(s, strlen(s))) == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	f->kind = D2V_FIELD_STR;
	return 0;
}

int
d2v_record_remove(d2v_record *rec, const char *key)
{
	for (int i = 0; i < rec->nfields; i++) {
		if (strcmp(rec->fields[i].key, key) == 0) {
			field_free(&rec->fields[i]);
			memmove(&rec->fields[i], &rec->fields[i + 1],
			    (size_t)(rec->nfields - i - 1) * sizeof *rec->fields);
			rec->nfields--;
			return 1;
		}
	}
	return 0;
}

/* ==== headers =========================================================== */

json_t *
d2v_header_new(const char *modality)
{
	return json_pack("{s:i, s:s, s:s, s:[], s:{}}", "d2v", D2V_STREAM_VERSION,
	    "type", "header", "modality", modality, "stages", "meta");
}

const char *
d2v_header_modality(const json_t *hdr)
{
	return json_string_value(json_object_get(hdr, "modality"));
}

int
d2v_header_has_stage(const json_t *hdr, const char *stage)
{
	size_t i;
	json_t *v;

	json_array_foreach(json_object_get(hdr, "stages"), i, v)
		if (json_is_string(v) && strcmp(json_string_value(v), stage) == 0)
			return 1;
	return 0;
}

json_t *
d2v_header_meta(const json_t *hdr, const char *stage)
{
	return json_object_get(json_object_get(hdr, "meta"), stage);
}

int
d2v_header_add_stage(json_t *hdr, const char *stage, json_t *meta,
    d2v_err *err)
{
	json_t *stages = json_object_get(hdr, "stages");
	json_t *m = json_object_get(hdr, "meta");

	if (!json_is_array(stages) || !json_is_object(m)) {
		json_decref(meta);
		return d2v_err_set(err, D2V_EFORMAT,
		    "header has no stages list or meta map");
	}
	if (json_array_append_new(stages, json_string(stage)) < 0 ||
	    json_object_set_new(m, stage, meta ? meta : json_object()) < 0)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	return 0;
}

/* The meta settings that fix tensor shapes; concatenated streams must agree
 * on them (d2v-stream(5), CONCATENATION). */
static const char *const shape_keys[] = {
	"size", "channels", "patch", "copies", "tokens", "sample_rate",
	"block", "vocab_size", "dim", "top_k", "strategy", "dtype", NULL
};

int
d2v_header_compatible(const json_t *a, const json_t *b, d2v_err *err)
{
	const char *ma = d2v_header_modality(a), *mb = d2v_header_modality(b);
	json_t *sa = json_object_get(a, "stages"), *sb = json_object_get(b, "stages");
	size_t i;
	json_t *st;

	if (ma == NULL || mb == NULL || strcmp(ma, mb) != 0)
		return d2v_err_set(err, D2V_EMISMATCH,
		    "header of modality %s follows a stream of modality %s",
		    mb ? mb : "(none)", ma ? ma : "(none)");
	if (!json_equal(sa, sb)) {
		char *ja = json_dumps(sa, JSON_COMPACT), *jb = json_dumps(sb, JSON_COMPACT);

		d2v_err_set(err, D2V_EMISMATCH,
		    "header with stages %s follows a stream with stages %s",
		    jb ? jb : "?", ja ? ja : "?");
		free(ja);
		free(jb);
		return D2V_EMISMATCH;
	}
	json_array_foreach(sa, i, st) {
		const char *stage = json_string_value(st);
		json_t *m1, *m2;

		if (stage == NULL)
			continue;
		m1 = d2v_header_meta(a, stage);
		m2 = d2v_header_meta(b, stage);
		for (int k = 0; shape_keys[k] != NULL; k++) {
			json_t *v1 = json_object_get(m1, shape_keys[k]);
			json_t *v2 = json_object_get(m2, shape_keys[k]);

			if ((v1 || v2) && !(v1 && v2 && json_equal(v1, v2))) {
				char *j1 = v1 ? json_dumps(v1, JSON_ENCODE_ANY) : NULL;
				char *j2 = v2 ? json_dumps(v2, JSON_ENCODE_ANY) : NULL;

				d2v_err_set(err, D2V_EMISMATCH,
				    "header with %s.%s = %s follows a stream "
				    "with %s.%s = %s", stage, shape_keys[k],
				    j2 ? j2 : "(unset)", stage, shape_keys[k],
				    j1 ? j1 : "(unset)");
				free(j1);
				free(j2);
				return D2V_EMISMATCH;
			}
		}
	}
	return 0;
}

/* ==== msgpack <-> JSON ================================================== */

/* Converts obj to JSON; bin and ext become {"bin": n} / {"ext": type} unless
 * strict, in which case they are an error (NULL, *bad set to the kind). */
static json_t *
obj_to_json(const msgpack_object *o, int strict, const char **bad)
{
	json_t *j = NULL;

	switch (o->type) {
	case MSGPACK_OBJECT_NIL: return json_null();
	case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > (uint64_t)INT64_MAX)
			return json_real((double)o->via.u64);
		return json_integer((json_int_t)o->via.u64);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer(o->via.i64);
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return json_real(o->via.f64);
	case MSGPACK_OBJECT_STR:
		return json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
	case MSGPACK_OBJECT_ARRAY:
		j = json_array();
		for (uint32_t i = 0; j && i < o->via.array.size; i++) {
			json_t *v = obj_to_json(&o->via.array.ptr[i], strict, bad);

			if (v == NULL || json_array_append_new(j, v) < 0) {
				json_decref(j);
				return NULL;
			}
		}
		return j;
	case MSGPACK_OBJECT_MAP:
		j = json_object();
		for (uint32_t i = 0; j && i < o->via.map.size; i++) {
			const msgpack_object_kv *kv = &o->via.map.ptr[i];
			char *key;
			json_t *v;

			if (kv->key.type != MSGPACK_OBJECT_STR) {
				*bad = "a map key that is not a string";
				json_decref(j);
				return NULL;
			}
			key = xstrndup(kv->key.via.str.ptr, kv->key.via.str.size);
			v = obj_to_json(&kv->val, strict, bad);
			if (key == NULL || v == NULL ||
			    json_object_set_new_nocheck(j, key, v) < 0) {
				free(key);
				json_decref(j);
				return NULL;
			}
			free(key);
		}
		return j;
	case MSGPACK_OBJECT_BIN:
		if (strict) {
			*bad = "binary data";
			return NULL;
		}
		return json_pack("{s:I}", "bin", (json_int_t)o->via.bin.size);
	case MSGPACK_OBJECT_EXT:
		if (strict) {
			*bad = "an ext value";
			return NULL;
		}
		return json_pack("{s:i,s:I}", "ext", (int)o->via.ext.type,
		    "size", (json_int_t)o->via.ext.size);
	}
	*bad = "an unknown msgpack type";
	return NULL;
}

json_t *
d2v_msgpack_to_json(const unsigned char *buf, size_t len)
{
	msgpack_unpacked u;
	size_t off = 0;
	const char *bad = NULL;
	json_t *j = NULL;

	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, (const char *)buf, len, &off) ==
	    MSGPACK_UNPACK_SUCCESS)
		j = obj_to_json(&u.data, 0, &bad);
	msgpack_unpacked_destroy(&u);
	return j;
}

static int
pack_json(msgpack_packer *pk, const json_t *j)
{
	size_t i;
	const char *k;
	json_t *v;

	switch (json_typeof(j)) {
	case JSON_OBJECT:
		if (msgpack_pack_map(pk, json_object_size(j)) < 0)
			return -1;
		json_object_foreach((json_t *)j, k, v) {
			size_t n = strlen(k);

			if (msgpack_pack_str(pk, n) < 0 ||
			    msgpack_pack_str_body(pk, k, n) < 0 ||
			    pack_json(pk, v) < 0)
				return -1;
		}
		return 0;
	case JSON_ARRAY:
		if (msgpack_pack_array(pk, json_array_size(j)) < 0)
			return -1;
		json_array_foreach(j, i, v)
			if (pack_json(pk, v) < 0)
				return -1;
		return 0;
	case JSON_STRING:
		return msgpack_pack_str_with_body(pk, json_string_value(j),
		    json_string_length(j));
	case JSON_INTEGER: return msgpack_pack_int64(pk, json_integer_value(j));
	case JSON_REAL: return msgpack_pack_double(pk, json_real_value(j));
	case JSON_TRUE: return msgpack_pack_true(pk);
	case JSON_FALSE: return msgpack_pack_false(pk);
	case JSON_NULL: return msgpack_pack_nil(pk);
	}
	return -1;
}

/* ==== reader ============================================================ */

enum { R_START, R_STREAM, R_AFTER_END };

struct d2v_reader {
	msgpack_unpacker u;
	msgpack_unpacked res;
	int fd;                   /* -1 for a memory reader */
	int wake;                 /* d2v_reader_set_wake's fd, or -1 */
	int intr;                 /* d2v_reader_set_interrupt's fd, or -1 */
	const unsigned char *mem;
	size_t memlen, mempos;
	char name[256];
	int eof;
	uint64_t fed;             /* bytes given to the unpacker */
	uint64_t off;             /* bytes of complete objects */
	int state;
	json_t *header;           /* the first header */
	int streams;
	int64_t records;          /* records returned */
	int64_t seg_records;      /* records since the last header */
	size_t limit;             /* D2V_MAX_TENSOR */
	d2v_err err;              /* sticky */
};

/* 0 once r->fd has input (or its end, or an error, for read to say),
 * 1 when r->wake became readable first, 2 when r->intr did */
static int
wait_input(d2v_reader *r)
{
	struct pollfd pf[3] = {
		{ .fd = r->fd, .events = POLLIN },
		{ .fd = r->wake, .events = POLLIN },
		{ .fd = r->intr, .events = POLLIN },
	};

	for (;;) {
		if (poll(pf, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 0; /* let read say what is wrong */
		}
		if (pf[2].revents)
			return 2;
		if (pf[1].revents)
			return 1;
		if (pf[0].revents)
			return 0;
	}
}

void
d2v_reader_set_interrupt(d2v_reader *r, int fd)
{
	r->intr = fd;
}

void
d2v_reader_set_wake(d2v_reader *r, int fd)
{
	r->wake = fd;
}

static int
reader_new(d2v_reader **rp, const char *name, size_t initial, d2v_err *err)
{
	d2v_reader *r = calloc(1, sizeof *r);

	*rp = NULL;
	if (r == NULL || !msgpack_unpacker_init(&r->u, initial)) {
		free(r);
		return d2v_err_set(err, D2V_ENOMEM, "%s: out of memory", name);
	}
	msgpack_unpacked_init(&r->res);
	snprintf(r->name, sizeof r->name, "%s", name);
	r->fd = -1;
	r->wake = -1;
	r->intr = -1;
	r->limit = d2v_tensor_limit();
	*rp = r;
	return 0;
}

int
d2v_reader_open_fd(d2v_reader **rp, int fd, const char *name, d2v_err *err)
{
	int rc = reader_new(rp, name, READ_CHUNK, err);

	if (rc == 0)
		(*rp)->fd = fd;
	return rc;
}

int
d2v_reader_open_mem(d2v_reader **rp, const void *buf, size_t len,
    const char *name, d2v_err *err)
{
	int rc = reader_new(rp, name, len < READ_CHUNK ? len + 64 : READ_CHUNK,
	    err);

	if (rc == 0) {
		(*rp)->mem = buf;
		(*rp)->memlen = len;
	}
	return rc;
}

void
d2v_reader_free(d2v_reader *r)
{
	if (r == NULL)
		return;
	msgpack_unpacked_destroy(&r->res);
	msgpack_unpacker_destroy(&r->u);
	json_decref(r->header);
	free(r);
}

json_t *d2v_reader_header(const d2v_reader *r) { return r->header; }
int64_t d2v_reader_records(const d2v_reader *r) { return r->records; }
uint64_t d2v_reader_offset(const d2v_reader *r) { return r->off; }
int d2v_reader_streams(const d2v_reader *r) { return r->streams; }

/* Sets the sticky error with the position prefix; returns code. */
__attribute__((format(printf, 3, 4)))
static int
rerr(d2v_reader *r, int code, const char *fmt, ...)
{
	char msg[D2V_ERR_MSG];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (r->state == R_STREAM)
		d2v_err_set(&r->err, code, "%s: record %lld, byte %llu: %s",
		    r->name, (long long)r->records,
		    (unsigned long long)r->off, msg);
	else
		d2v_err_set(&r->err, code, "%s: byte %llu: %s", r->name,
		    (unsigned long long)r->off, msg);
	return code;
}

/* Feeds more input to the unpacker; sets eof at the end. */
static int
reader_fill(d2v_reader *r)
{
	size_t want = READ_CHUNK;
	ssize_t n;

	if (r->fd < 0 && r->memlen - r->mempos < want)
		want = r->memlen - r->mempos + 1;
	if (!msgpack_unpacker_reserve_buffer(&r->u, want))
		return rerr(r, D2V_ENOMEM, "out of memory reading input");
	if (r->fd < 0) {
		size_t left = r->memlen - r->mempos;
		size_t cap = msgpack_unpacker_buffer_capacity(&r->u);

		n = (ssize_t)(left < cap ? left : cap);
		if (n > 0)
			memcpy(msgpack_unpacker_buffer(&r->u), r->mem + r->mempos,
			    (size_t)n);
		r->mempos += (size_t)n;
	} else {
		int w = r->wake >= 0 || r->intr >= 0 ? wait_input(r) : 0;

		if (w == 2)
			return rerr(r, D2V_EIO, "reading interrupted");
		if (w == 1)
			return rerr(r, D2V_EIO, "reading stopped");
		do
			n = read(r->fd, msgpack_unpacker_buffer(&r->u),
			    msgpack_unpacker_buffer_capacity(&r->u));
		while (n < 0 && errno == EINTR);
		if (n < 0)
			return rerr(r, D2V_EIO, "read error: %s", strerror(errno));
	}
	if (n == 0)
		r->eof = 1;
	msgpack_unpacker_buffer_consumed(&r->u, (size_t)n);
	r->fed += (uint64_t)n;
	return 0;
}

/*
 * Finds the end of the msgpack object at p[0..n).  Returns 1 with *len when
 * it is whole, 0 with *need (a lower bound on the bytes it takes) when more
 * input is needed, or -1 with *why for bytes that cannot be msgpack or a bin,
 * str or ext above limit.  msgpack-c allocates arrays and maps by their
 * claimed counts as soon as it sees them, so the reader hands it an object
 * only once every byte of it is here: then a claimed count is bounded by the
 * bytes that back it.
 */
static int
mp_scan(const unsigned char *p, size_t n, size_t limit, size_t *len,
    size_t *need, const char **why)
{
	uint64_t left = 1; /* objects still to read */
	size_t pos = 0;

	while (left > 0) {
		uint64_t count = 0, skip = 0;
		unsigned hdr, c;

		if (pos >= n) {
			*need = pos + (left > SIZE_MAX / 2 ? SIZE_MAX / 2 : left);
			return 0;
		}
		c = p[pos];
		left--;
		if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
			pos++;
			continue;
		}
		if ((c & 0xf0) == 0x80 || (c & 0xf0) == 0x90) { /* fixmap, fixarray */
			count = (uint64_t)(c & 0x0f) * ((c & 0xf0) == 0x80 ? 2 : 1);
			left += count;
			pos++;
			continue;
		}
		if ((c & 0xe0) == 0xa0) { /* fixstr */
			skip = c & 0x1f;
			hdr = 1;
		} else {
			static const unsigned char lensz[] = {
				/* c4 bin8 */ 1, 2, 4, /* c7 ext8 */ 1, 2, 4,
				/* ca float32 */ 4, 8, /* cc uint */ 1, 2, 4, 8,
				/* d0 int */ 1, 2, 4, 8, /* d4 fixext */ 1, 2, 4, 8, 16,
				/* d9 str8 */ 1, 2, 4, /* dc array16 */ 2, 4,
				/* de map16 */ 2, 4,
			};
			unsigned k, i;
			uint64_t v = 0;

			if (c == 0xc1) {
				*why = "byte 0xc1 is never used in msgpack";
				return -1;
			}
			k = lensz[c - 0xc4];
			if ((c >= 0xca && c <= 0xd3)) { /* fixed-size numbers */
				pos += 1 + k;
				continue;
			}
			if (c >= 0xd4 && c <= 0xd8) { /* fixext: type + data */
				pos += 2 + k;
				continue;
			}
			if (pos + 1 + k > n) {
				*need = pos + 1 + k + left;
				return 0;
			}
			for (i = 0; i < k; i++)
				v = v << 8 | p[pos + 1 + i];
			hdr = 1 + k;
			if (c == 0xdc || c == 0xdd) {
				left += v;
				pos += hdr;
				continue;
			}
			if (c == 0xde || c == 0xdf) {
				left += 2 * v;
				pos += hdr;
				continue;
			}
			skip = v;
			if (c >= 0xc7 && c <= 0xc9)
				hdr++; /* ext type byte */
		}
		if (skip > limit) {
			*why = "a string or binary value is above the tensor "
			    "limit (D2V_MAX_TENSOR)";
			return -1;
		}
		pos += hdr + (size_t)skip;
	}
	if (pos > n) {
		*need = pos;
		return 0;
	}
	*len = pos;
	return 1;
}

/* Next top-level object into r->res.data: 1, 0 at EOF between objects, <0. */
static int
reader_object(d2v_reader *r)
{
	size_t need = 1;

	for (;;) {
		size_t avail = r->u.used - r->u.off, len, sz = 0;
		const char *why = NULL;
		int rc;

		if (avail >= need && avail > 0) {
			rc = mp_scan((const unsigned char *)r->u.buffer + r->u.off,
			    avail, r->limit + 64, &len, &need, &why);
			if (rc < 0)
				return rerr(r, D2V_EFORMAT, "not a valid msgpack "
				    "object: %s", why);
			if (rc == 1) {
				msgpack_unpack_return ret;

				ret = msgpack_unpacker_next_with_size(&r->u,
				    &r->res, &sz);
				if (ret == MSGPACK_UNPACK_SUCCESS)
					return 1;
				/* msgpack-c says "no memory" when its stack of
				 * 32 nested containers is full: the likely cause,
				 * since every count was bounded by bytes here */
				if (ret == MSGPACK_UNPACK_NOMEM_ERROR)
					return rerr(r, D2V_EFORMAT, "not a valid "
					    "object: arrays or maps nested more than "
					    "%d deep (or out of memory)",
					    32);
				return rerr(r, D2V_EFORMAT, "not a msgpack "
				    "object (or nested too deeply)");
			}
		}
		if (r->eof)
			return avail > 0 ? rerr(r, D2V_ETRUNC,
			    "truncated: input ends inside an object "
			    "(%zu bytes of it present)", avail) : 0;
		if ((rc = reader_fill(r)) < 0)
			return rc;
	}
}

static int
str_eq(const msgpack_object *o, const char *s)
{
	size_t n = strlen(s);

	return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
	    memcmp(o->via.str.ptr, s, n) == 0;
}

static const msgpack_object *
map_get(const msgpack_object *m, const char *key)
{
	for (uint32_t i = 0; i < m->via.map.size; i++)
		if (str_eq(&m->via.map.ptr[i].key, key))
			return &m->via.map.ptr[i].val;
	return NULL;
}

/* Parses a tensor map; on error sets the sticky error naming key. */
static int
parse_tensor(d2v_reader *r, const char *key, const msgpack_object *o,
    d2v_tensor *t)
{
	const msgpack_object *dt = map_get(o, "dtype"), *sh = map_get(o, "shape");
	const msgpack_object *data = map_get(o, "data");
	int64_t shape[D2V_MAX_RANK];
	d2v_dtype dtype;
	d2v_err e;
	int rc;

	if (dt == NULL || sh == NULL || data == NULL || o->via.map.size != 3)
		return rerr(r, D2V_EFORMAT, "tensor %s must have exactly the "
		    "keys dtype, shape and data", key);
	if (dt->type != MSGPACK_OBJECT_STR)
		return rerr(r, D2V_EFORMAT, "tensor %s: dtype is not a string",
		    key);
	if (d2v_dtype_parse(dt->via.str.ptr, dt->via.str.size, &dtype) < 0)
		return rerr(r, D2V_EFORMAT, "tensor %s: unknown dtype \"%.*s\"",
		    key, (int)(dt->via.str.size > 32 ? 32 : dt->via.str.size),
		    dt->via.str.ptr);
	if (sh->type != MSGPACK_OBJECT_ARRAY)
		return rerr(r, D2V_EFORMAT, "tensor %s: shape is not an array",
		    key);
	if (sh->via.array.size > D2V_MAX_RANK)
		return rerr(r, D2V_ELIMIT, "tensor %s: rank %u is above the "
		    "limit of %d", key, sh->via.array.size, D2V_MAX_RANK);
	for (uint32_t i = 0; i < sh->via.array.size; i++) {
		const msgpack_object *d = &sh->via.array.ptr[i];

		if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
		    d->via.u64 > (uint64_t)INT64_MAX)
			return rerr(r, D2V_EFORMAT, "tensor %s: dimension %u "
			    "is not a non-negative integer", key, i);
		shape[i] = (int64_t)d->via.u64;
	}
	if (data->type != MSGPACK_OBJECT_BIN)
		return rerr(r, D2V_EFORMAT, "tensor %s: data is not binary", key);
	rc = d2v_tensor_check(dtype, (int)sh->via.array.size, shape,
	    data->via.bin.size, r->limit, &e);
	if (rc < 0)
		return rerr(r, rc, "tensor %s: %s", key, e.msg);
	memset(t, 0, sizeof *t);
	t->dtype = dtype;
	t->rank = (int)sh->via.array.size;
	memcpy(t->shape, shape, sizeof(int64_t) * (size_t)t->rank);
	t->nbytes = data->via.bin.size;
	if (t->nbytes > 0) {
		t->data = malloc(t->nbytes);
		if (t->data == NULL)
			return rerr(r, D2V_ENOMEM, "tensor %s: out of memory "
			    "for %zu bytes", key, t->nbytes);
		memcpy(t->data, data->via.bin.ptr, t->nbytes);
	}
	return 0;
}

static int
parse_record(d2v_reader *r, const msgpack_object *o, d2v_record *rec)
{
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;
		const msgpack_object *v = &o->via.map.ptr[i].val;
		char key[128];
		d2v_field *f;

		if (k->type != MSGPACK_OBJECT_STR)
			return rerr(r, D2V_EFORMAT, "a record key is not a string");
		if (k->via.str.size >= sizeof key || k->via.str.size == 0 ||
		    memchr(k->via.str.ptr, '\0', k->via.str.size))
			return rerr(r, D2V_EFORMAT, "a record key is empty, "
			    "longer than %zu bytes or holds a NUL",
			    sizeof key - 1);
		memcpy(key, k->via.str.ptr, k->via.str.size);
		key[k->via.str.size] = '\0';
		for (uint32_t j = 0; j < i; j++)
			if (str_eq(&o->via.map.ptr[j].key, key))
				return rerr(r, D2V_EFORMAT,
				    "key %s appears twice", key);
		if (strcmp(key, "type") == 0)
			continue;
		if (strcmp(key, "id") == 0) {
			if (v->type != MSGPACK_OBJECT_STR)
				return rerr(r, D2V_EFORMAT, "id is not a string");
			free(rec->id);
			rec->id = xstrndup(v->via.str.ptr, v->via.str.size);
			rec->id_len = v->via.str.size;
			if (rec->id == NULL)
				return rerr(r, D2V_ENOMEM, "out of memory");
			continue;
		}
		f = field_slot(rec, key, strlen(key));
		if (f == NULL)
			return rerr(r, D2V_ENOMEM, "out of memory");
		if (v->type == MSGPACK_OBJECT_MAP && map_get(v, "dtype") != NULL) {
			f->kind = D2V_FIELD_TENSOR;
			if (parse_tensor(r, key, v, &f->t) < 0)
				return r->err.code;
		} else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
		    v->via.u64 <= (uint64_t)INT64_MAX) {
			f->kind = D2V_FIELD_INT;
			f->i = (int64_t)v->via.u64;
		} else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
			f->kind = D2V_FIELD_INT;
			f->i = v->via.i64;
		} else if (v->type == MSGPACK_OBJECT_STR) {
			f->kind = D2V_FIELD_STR;
			f->s = xstrndup(v->via.str.ptr, v->via.str.size);
			if (f->s == NULL)
				return rerr(r, D2V_ENOMEM, "out of memory");
		} else {
			msgpack_sbuffer sb;
			msgpack_packer pk;

			msgpack_sbuffer_init(&sb);
			msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
			if (msgpack_pack_object(&pk, *v) < 0) {
				msgpack_sbuffer_destroy(&sb);
				return rerr(r, D2V_ENOMEM, "out of memory");
			}
			f->kind = D2V_FIELD_RAW;
			f->raw = (unsigned char *)sb.data; /* ownership moves */
			f->rawlen = sb.size;
		}
	}
	if (rec->id == NULL && (rec->id_len = 0,
	    rec->id = xstrndup("", 0)) == NULL)
		return rerr(r, D2V_ENOMEM, "out of memory");
	return 0;
}

static int
parse_header(d2v_reader *r, const msgpack_object *o)
{
	const msgpack_object *ver = map_get(o, "d2v");
	const char *bad = "an unconvertible value";
	json_t *h, *stages, *v;
	size_t i;
	int rc;

	if (ver == NULL)
		return rerr(r, D2V_EFORMAT, "header has no \"d2v\" version key");
	if (ver->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
	    ver->via.u64 != D2V_STREAM_VERSION)
		return rerr(r, D2V_EFORMAT, "unknown stream format version "
		    "(this reader knows version %d)", D2V_STREAM_VERSION);
	h = obj_to_json(o, 1, &bad);
	if (h == NULL)
		return rerr(r, D2V_EFORMAT, "header holds %s; headers are "
		    "JSON-like maps", bad);
	stages = json_object_get(h, "stages");
	if (!json_is_string(json_object_get(h, "modality")) ||
	    !json_is_array(stages) ||
	    !json_is_object(json_object_get(h, "meta"))) {
		json_decref(h);
		return rerr(r, D2V_EFORMAT, "header needs a modality string, "
		    "a stages array and a meta map");
	}
	json_array_foreach(stages, i, v) {
		if (!json_is_string(v)) {
			json_decref(h);
			return rerr(r, D2V_EFORMAT, "header stages must be strings");
		}
	}
	if (r->header == NULL) {
		r->header = h;
	} else {
		d2v_err e;

		rc = d2v_header_compatible(r->header, h, &e);
		json_decref(h);
		if (rc < 0)
			return rerr(r, rc, "%s", e.msg);
	}
	r->streams++;
	r->seg_records = 0;
	r->state = R_STREAM;
	return 0;
}

/* Handles one top-level object; returns 1 if it was a record. */
static int
reader_dispatch(d2v_reader *r, const msgpack_object *o, d2v_record *rec)
{
	const msgpack_object *type;

	if (o->type != MSGPACK_OBJECT_MAP)
		return rerr(r, D2V_EFORMAT, "object is not a map");
	type = map_get(o, "type");
	if (type == NULL || type->type != MSGPACK_OBJECT_STR)
		return rerr(r, D2V_EFORMAT, "object has no \"type\" string");
	if (str_eq(type, "header")) {
		if (r->state == R_STREAM)
			return rerr(r, D2V_EFORMAT, "a header inside a stream "
			    "(the previous stream has no trailer)");
		return parse_header(r, o);
	}
	if (r->state == R_START)
		return rerr(r, D2V_EFORMAT, "stream does not start with a "
		    "header");
	if (r->state == R_AFTER_END)
		return rerr(r, D2V_EFORMAT, "object after a trailer that is "
		    "not a header");
	if (str_eq(type, "end")) {
		const msgpack_object *n = map_get(o, "records");

		if (n == NULL || n->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return rerr(r, D2V_EFORMAT,
			    "trailer has no \"records\" count");
		if (n->via.u64 != (uint64_t)r->seg_records)
			return rerr(r, D2V_EFORMAT, "trailer says %llu records, "
			    "the stream had %lld", (unsigned long long)n->via.u64,
			    (long long)r->seg_records);
		r->state = R_AFTER_END;
		return 0;
	}
	if (str_eq(type, "record")) {
		d2v_record_clear(rec);
		if (parse_record(r, o, rec) < 0) {
			d2v_record_clear(rec);
			return r->err.code;
		}
		rec->index = r->records;
		return 1;
	}
	return rerr(r, D2V_EFORMAT, "unknown object type \"%.*s\"",
	    (int)(type->via.str.size > 32 ? 32 : type->via.str.size),
	    type->via.str.ptr);
}

/* Reads objects until a record (1), the clean end (0) or an error. */
static int
reader_step(d2v_reader *r, d2v_record *rec, int stop_after_header)
{
	for (;;) {
		int rc = reader_object(r);

		if (rc < 0)
			return rc;
		if (rc == 0) {
			if (r->state == R_START)
				return rerr(r, D2V_EEMPTY, "empty input: no "
				    "stream header");
			if (r->state == R_STREAM)
				return rerr(r, D2V_ETRUNC, "truncated: input "
				    "ends without a trailer");
			return 0;
		}
		rc = reader_dispatch(r, &r->res.data, rec);
		msgpack_unpacked_destroy(&r->res);
		msgpack_unpacked_init(&r->res);
		if (rc < 0)
			return rc;
		r->off = r->fed - (uint64_t)(r->u.used - r->u.off);
		if (rc == 1) {
			r->records++;
			r->seg_records++;
			return 1;
		}
		if (stop_after_header && r->state == R_STREAM)
			return 0;
	}
}

int
d2v_reader_begin(d2v_reader *r, d2v_err *err)
{
	int rc;

	if (r->err.code < 0)
		return d2v_err_copy(err, &r->err);
	if (r->header != NULL)
		return 0;
	rc = reader_step(r, NULL, 1);
	if (rc < 0)
		return d2v_err_copy(err, &r->err);
	return 0;
}

int
d2v_reader_next(d2v_reader *r, d2v_record *rec, d2v_err *err)
{
	int rc;

	if (r->err.code < 0)
		return d2v_err_copy(err, &r->err);
	rc = reader_step(r, rec, 0);
	if (rc < 0)
		return d2v_err_copy(err, &r->err);
	return rc;
}

/* ==== writer ============================================================ */

struct d2v_writer {
	int fd;
	char name[256];
	unsigned char *buf;       /* WRITE_BUF bytes */
	size_t used;
	msgpack_packer pk;
	int64_t records;
	int header_done, end_done;
	d2v_err err;              /* sticky */
};

static int
write_all(d2v_writer *w, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0) {
		ssize_t k = write(w->fd, c, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			d2v_err_set(&w->err, D2V_EIO, "%s: write error: %s",
			    w->name, strerror(errno));
			return -1;
		}
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

static int
writer_cb(void *data, const char *p, size_t n)
{
	d2v_writer *w = data;

	if (w->err.code < 0)
		return -1;
	/* a big piece goes straight to the fd, after what is buffered */
	if (w->used + n > WRITE_BUF || (n >= WRITE_BUF / 2 && w->used > 0)) {
		if (write_all(w, w->buf, w->used) < 0)
			return -1;
		w->used = 0;
	}
	if (n >= WRITE_BUF / 2)
		return write_all(w, p, n);
	memcpy(w->buf + w->used, p, n);
	w->used += n;
	return 0;
}

int
d2v_writer_open_fd(d2v_writer **wp, int fd, const char *name, d2v_err *err)
{
	d2v_writer *w = calloc(1, sizeof *w);

	*wp = NULL;
	if (w == NULL || (w->buf = malloc(WRITE_BUF)) == NULL) {
		free(w);
		return d2v_err_set(err, D2V_ENOMEM, "%s: out of memory", name);
	}
	w->fd = fd;
	snprintf(w->name, sizeof w->name, "%s", name);
	msgpack_packer_init(&w->pk, w, writer_cb);
	*wp = w;
	return 0;
}

void
d2v_writer_free(d2v_writer *w)
{
	if (w == NULL)
		return;
	free(w->buf);
	free(w);
}

int64_t d2v_writer_records(const d2v_writer *w) { return w->records; }

static int
wfail(d2v_writer *w, d2v_err *err)
{
	if (w->err.code == 0)
		d2v_err_set(&w->err, D2V_EIO, "%s: write error", w->name);
	return d2v_err_copy(err, &w->err);
}

static int
pack_str(msgpack_packer *pk, const char *s)
{
	return msgpack_pack_str_with_body(pk, s, strlen(s));
}

int
d2v_writer_header(d2v_writer *w, const json_t *hdr, d2v_err *err)
{
	if (w->err.code < 0)
		return d2v_err_copy(err, &w->err);
	if (w->header_done)
		return d2v_err_set(err, D2V_EINVAL, "%s: header written twice",
		    w->name);
	if (!json_is_object(hdr) || json_integer_value(json_object_get(hdr,
	    "d2v")) != D2V_STREAM_VERSION || d2v_header_modality(hdr) == NULL)
		return d2v_err_set(err, D2V_EINVAL, "%s: not a d2v header",
		    w->name);
	if (pack_json(&w->pk, hdr) < 0)
		return wfail(w, err);
	w->header_done = 1;
	return 0;
}

int
d2v_writer_record(d2v_writer *w, const d2v_record *rec, d2v_err *err)
{
	msgpack_packer *pk = &w->pk;

	if (w->err.code < 0)
		return d2v_err_copy(err, &w->err);
	if (!w->header_done || w->end_done)
		return d2v_err_set(err, D2V_EINVAL, "%s: record written %s",
		    w->name, w->end_done ? "after the trailer" :
		    "before the header");
	for (int i = 0; i < rec->nfields; i++) {
		const d2v_field *f = &rec->fields[i];

		if (f->kind == D2V_FIELD_TENSOR && f->t.nbytes > UINT32_MAX)
			return d2v_err_set(err, D2V_ELIMIT, "%s: record %s: "
			    "tensor %s is %zu bytes, above msgpack's 4 GiB "
			    "limit for one bin", w->name, rec->id ? rec->id : "",
			    f->key, f->t.nbytes);
	}
	if (msgpack_pack_map(pk, (size_t)rec->nfields + 2) < 0 ||
	    pack_str(pk, "type") < 0 || pack_str(pk, "record") < 0 ||
	    pack_str(pk, "id") < 0 || msgpack_pack_str_with_body(pk,
	    rec->id ? rec->id : "", rec->id ? rec->id_len : 0) < 0)
		return wfail(w, err);
	for (int i = 0; i < rec->nfields; i++) {
		const d2v_field *f = &rec->fields[i];
		int rc = pack_str(pk, f->key);

		switch (f->kind) {
		case D2V_FIELD_TENSOR:
			rc |= msgpack_pack_map(pk, 3);
			rc |= pack_str(pk, "dtype");
			rc |= pack_str(pk, d2v_dtype_name(f->t.dtype));
			rc |= pack_str(pk, "shape");
			rc |= msgpack_pack_array(pk, (size_t)f->t.rank);
			for (int d = 0; d < f->t.rank; d++)
				rc |= msgpack_pack_uint64(pk,
				    (uint64_t)f->t.shape[d]);
			rc |= pack_str(pk, "data");
			rc |= msgpack_pack_bin(pk, f->t.nbytes);
			if (f->t.nbytes > 0)
				rc |= msgpack_pack_bin_body(pk, f->t.data,
				    f->t.nbytes);
			break;
		case D2V_FIELD_INT:
			rc |= msgpack_pack_int64(pk, f->i);
			break;
		case D2V_FIELD_STR:
			rc |= pack_str(pk, f->s);
			break;
		case D2V_FIELD_RAW:
			rc |= writer_cb(w, (const char *)f->raw, f->rawlen);
			break;
		}
		if (rc != 0)
			return wfail(w, err);
	}
	w->records++;
	return 0;
}

int
d2v_writer_flush(d2v_writer *w, d2v_err *err)
{
	if (w->err.code < 0)
		return d2v_err_copy(err, &w->err);
	if (w->used > 0 && write_all(w, w->buf, w->used) < 0)
		return d2v_err_copy(err, &w->err);
	w->used = 0;
	return 0;
}

int
d2v_writer_end(d2v_writer *w, d2v_err *err)
{
	msgpack_packer *pk = &w->pk;

	if (w->err.code < 0)
		return d2v_err_copy(err, &w->err);
	if (!w->header_done || w->end_done)
		return d2v_err_set(err, D2V_EINVAL, "%s: trailer written %s",
		    w->name, w->end_done ? "twice" : "before the header");
	if (msgpack_pack_map(pk, 2) < 0 || pack_str(pk, "type") < 0 ||
	    pack_str(pk, "end") < 0 || pack_str(pk, "records") < 0 ||
	    msgpack_pack_int64(pk, w->records) < 0)
		return wfail(w, err);
	w->end_done = 1;
	return d2v_writer_flush(w, err);
}
