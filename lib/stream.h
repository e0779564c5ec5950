/*
 * stream.h - the d2v tensor stream (man/man5/d2v-stream.5).
 *
 * A stream is a concatenation of msgpack maps: a header, records, a trailer.
 *
 *     {"d2v": 1, "type": "header", "modality": "image", "stages": [...], "meta": {...}}
 *     {"type": "record", "id": "train:0", "x": {"dtype": "u8", "shape": [1,28,28], "data": <bin>}, "label": 9}
 *     ...
 *     {"type": "end", "records": 60000}
 *
 * Streams concatenate: after a trailer, a new header may follow when it agrees
 * with the first (modality, stages and the shape settings of every stage).
 * A stage reading a concatenation writes one header and one trailer.
 *
 * The header is a jansson object (the whole map, unknown keys included).  A
 * record is an id plus named fields: tensors, integers, strings, and "raw"
 * values - any other msgpack value kept as its packed bytes, so a stage that
 * rewrites a record passes keys it does not know on unchanged.
 *
 * Reading (every error is sticky and names the record index and byte offset):
 *
 *     d2v_reader *r; d2v_record rec; d2v_err err; int rc;
 *     d2v_record_init(&rec);
 *     if (d2v_reader_open_fd(&r, 0, "stdin", &err) < 0) ...
 *     while ((rc = d2v_reader_next(r, &rec, &err)) > 0) {
 *         d2v_tensor *x = d2v_record_tensor(&rec, "x");
 *         ...
 *     }
 *     if (rc < 0) fprintf(stderr, "%s\n", err.msg);   // truncated, corrupt...
 *
 * Writing (buffered; tensors larger than the buffer go straight to the fd):
 *
 *     d2v_writer *w;
 *     d2v_writer_open_fd(&w, 1, "stdout", &err);
 *     d2v_writer_header(w, hdr, &err);
 *     d2v_writer_record(w, &rec, &err);  ...
 *     d2v_writer_end(w, &err);           // trailer with the count, then flush
 *     d2v_writer_free(w);
 */
#ifndef D2V_STREAM_H
#define D2V_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "tensor.h"

#define D2V_STREAM_VERSION 1

/* ---- records ---------------------------------------------------------- */

typedef enum d2v_field_kind {
	D2V_FIELD_TENSOR,  /* t */
	D2V_FIELD_INT,     /* i */
	D2V_FIELD_STR,     /* s */
	D2V_FIELD_RAW,     /* raw: any other msgpack value, packed */
} d2v_field_kind;

typedef struct d2v_field {
	char *key;            /* owned, NUL-terminated */
	d2v_field_kind kind;
	d2v_tensor t;         /* D2V_FIELD_TENSOR */
	int64_t i;            /* D2V_FIELD_INT */
	char *s;              /* D2V_FIELD_STR, owned */
	unsigned char *raw;   /* D2V_FIELD_RAW: packed msgpack value, owned */
	size_t rawlen;
} d2v_field;

typedef struct d2v_record {
	char *id;             /* owned; "" when the record had none; NUL-
	                       * terminated, and may hold NUL bytes too */
	size_t id_len;        /* the id's bytes: the length that counts */
	d2v_field *fields;    /* nfields, in stream order, "type" and "id" excluded */
	int nfields;
	int cap;
	int64_t index;        /* 0-based position in the input (set by the reader) */
} d2v_record;

void d2v_record_init(d2v_record *rec);
/* Frees every field and the id; the record can be reused. */
void d2v_record_clear(d2v_record *rec);
#define d2v_record_free d2v_record_clear

int d2v_record_set_id(d2v_record *rec, const char *id, d2v_err *err);
/* The field named key, or NULL. */
d2v_field *d2v_record_field(const d2v_record *rec, const char *key);
/* The tensor named key, or NULL when absent or not a tensor. */
d2v_tensor *d2v_record_tensor(const d2v_record *rec, const char *key);
/* 1 and *out when key holds an integer, else 0. */
int d2v_record_int(const d2v_record *rec, const char *key, int64_t *out);
/* Setters replace an existing field of that name or append a new one.
 * set_tensor moves t into the record (t is zeroed). */
int d2v_record_set_tensor(d2v_record *rec, const char *key, d2v_tensor *t,
    d2v_err *err);
int d2v_record_set_int(d2v_record *rec, const char *key, int64_t v,
    d2v_err *err);
int d2v_record_set_str(d2v_record *rec, const char *key, const char *s,
    d2v_err *err);
/* Removes a field; returns 1 if it was there. */
int d2v_record_remove(d2v_record *rec, const char *key);

/* ---- headers ---------------------------------------------------------- */

/* A new header {"d2v":1,"type":"header","modality":m,"stages":[],"meta":{}}. */
json_t *d2v_header_new(const char *modality);
/* Its modality, or NULL. */
const char *d2v_header_modality(const json_t *hdr);
/* 1 if stage is in the header's stages list. */
int d2v_header_has_stage(const json_t *hdr, const char *stage);
/* meta.<stage> (borrowed), or NULL. */
json_t *d2v_header_meta(const json_t *hdr, const char *stage);
/* Appends stage to stages and sets meta.<stage> = meta (reference stolen). */
int d2v_header_add_stage(json_t *hdr, const char *stage, json_t *meta,
    d2v_err *err);
/* Whether header b may follow header a in one stream: same modality, same
 * stages, and equal shape settings in every stage's meta. */
int d2v_header_compatible(const json_t *a, const json_t *b, d2v_err *err);

/* ---- reader ----------------------------------------------------------- */

typedef struct d2v_reader d2v_reader;

/* A reader over a file descriptor (not closed by the reader); name is used in
 * messages. */
int d2v_reader_open_fd(d2v_reader **r, int fd, const char *name,
    d2v_err *err);
/* A reader over a memory buffer (not copied; must outlive the reader). */
int d2v_reader_open_mem(d2v_reader **r, const void *buf, size_t len,
    const char *name, d2v_err *err);
void d2v_reader_free(d2v_reader *r);
/* With fd >= 0, every read of the input first waits for it or for fd to
 * become readable, and fails ("reading stopped", sticky) when fd does
 * first: another thread's way to stop one blocked in a read.  -1 turns
 * it off. */
void d2v_reader_set_wake(d2v_reader *r, int fd);
/* Likewise with fd >= 0 every read first waits for the input or fd, and
 * fails ("reading interrupted", sticky) when fd becomes readable first;
 * fd is never read: a signal handler's self-pipe, which stops every read
 * after the signal.  -1 turns it off. */
void d2v_reader_set_interrupt(d2v_reader *r, int fd);

/* Reads up to and including the first header; returns 0, or an error
 * (D2V_EEMPTY for an empty input). Called by d2v_reader_next if needed. */
int d2v_reader_begin(d2v_reader *r, d2v_err *err);
/*
 * Reads the next record into rec (cleared first).  Returns 1 for a record, 0
 * at the clean end of the input (after a trailer), or a negative code; errors
 * are sticky.  Headers and trailers between concatenated streams are checked
 * and consumed here.
 */
int d2v_reader_next(d2v_reader *r, d2v_record *rec, d2v_err *err);
/* The first header (borrowed), or NULL before d2v_reader_begin. */
json_t *d2v_reader_header(const d2v_reader *r);
/* Records returned so far. */
int64_t d2v_reader_records(const d2v_reader *r);
/* Bytes of input consumed by complete objects. */
uint64_t d2v_reader_offset(const d2v_reader *r);
/* Headers seen (the number of concatenated streams). */
int d2v_reader_streams(const d2v_reader *r);

/* ---- writer ----------------------------------------------------------- */

typedef struct d2v_writer d2v_writer;

/* A buffered writer on a file descriptor (not closed by the writer). */
int d2v_writer_open_fd(d2v_writer **w, int fd, const char *name,
    d2v_err *err);
void d2v_writer_free(d2v_writer *w);
/* Writes the header (once, before any record). */
int d2v_writer_header(d2v_writer *w, const json_t *hdr, d2v_err *err);
/* Writes one record: "type", "id", then the fields in order. */
int d2v_writer_record(d2v_writer *w, const d2v_record *rec, d2v_err *err);
/* Writes the trailer {"type":"end","records":N} and flushes. */
int d2v_writer_end(d2v_writer *w, d2v_err *err);
/* Flushes buffered bytes to the fd. */
int d2v_writer_flush(d2v_writer *w, d2v_err *err);
/* Records written so far. */
int64_t d2v_writer_records(const d2v_writer *w);

/* ---- JSON <-> msgpack helpers, used by the reader, writer and d2v-show ---- */

/* Converts one packed msgpack value to JSON (bin becomes {"bin": nbytes}). */
json_t *d2v_msgpack_to_json(const unsigned char *buf, size_t len);

#endif
