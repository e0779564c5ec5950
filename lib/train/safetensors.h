/*
 * safetensors.h - read and write safetensors files (the Hugging Face format:
 * an 8-byte little-endian header length, a JSON header naming each tensor's
 * dtype, shape and byte range, then the data).  Checkpoints and reference
 * fixtures are safetensors, so Python reads them with json and numpy alone.
 */
#ifndef D2V_SAFETENSORS_H
#define D2V_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"

typedef struct d2v_st {
	json_t *header;        /* the parsed header, "__metadata__" included */
	unsigned char *data;   /* the bytes after the header */
	size_t datalen;
	char path[256];
	int verified;          /* 1: the data matched __metadata__'s
	                        * data_sha256; 0: the file has none */
} d2v_st;

/* Reads and validates a whole file: header size, JSON, every tensor's
 * dtype, shape and data_offsets against the data size, and the data
 * against the SHA-256 in __metadata__'s "data_sha256" where there is one
 * (d2v_st_save writes it; other tools' files load without). */
int d2v_st_load(d2v_st *st, const char *path, d2v_err *err);
void d2v_st_free(d2v_st *st);
/* A string of __metadata__, or NULL. */
const char *d2v_st_meta(const d2v_st *st, const char *key);
/* Tensor name with the given safetensors dtype ("F32", "U8"): its data and
 * shape; NULL when absent (or err set when present with another dtype). */
const void *d2v_st_get(const d2v_st *st, const char *name, const char *dtype,
    int *rank, int64_t *shape, size_t *nbytes, d2v_err *err);

typedef struct d2v_st_entry {
	char name[96];
	const char *dtype;     /* "F32" or "U8" */
	int rank;
	int64_t shape[8];
	const void *data;
	size_t nbytes;
} d2v_st_entry;

/* Writes entries (any order; the header lists them sorted) with meta (an
 * object of strings, may be NULL) and "data_sha256", the SHA-256 of the
 * data section in hex, atomically (atomic.h).  On failure path is
 * untouched. */
int d2v_st_save(const char *path, const json_t *meta, const d2v_st_entry *e,
    int n, d2v_err *err);

#endif
