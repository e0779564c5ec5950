/*
 * err.h - the one error idiom of libd2v.
 *
 * Every fallible function returns 0 (or a count) on success and a negative
 * D2V_E* code on failure, and fills a caller-provided d2v_err with a message
 * that names what went wrong ("record 17, byte 40961: data is 12 bytes, shape
 * [2,3] of f32 needs 24").  The library never prints and never exits; the
 * commands in cmd/ decide what to do with the message.
 *
 *     d2v_err err;
 *     if (d2v_tensor_init(&t, D2V_DTYPE_F32, 2, shape, &err) < 0)
 *         fprintf(stderr, "prog: %s\n", err.msg);
 *
 * Objects that read or write streams keep the first error ("sticky"): later
 * calls do nothing and return the same code, so pipe code can read straight
 * through and check once.
 */
#ifndef D2V_ERR_H
#define D2V_ERR_H

#include <stddef.h>

enum d2v_errcode {
	D2V_OK = 0,
	D2V_EIO = -1,      /* read or write failed (errno in the message) */
	D2V_ENOMEM = -2,   /* allocation failed */
	D2V_EFORMAT = -3,  /* malformed input: not msgpack, wrong types, bad schema */
	D2V_ETRUNC = -4,   /* input ended early: inside an object or without a trailer */
	D2V_ELIMIT = -5,   /* a size above a limit (rank, D2V_MAX_TENSOR, 4 GiB bin) */
	D2V_EINVAL = -6,   /* invalid argument or setting */
	D2V_EMISMATCH = -7,/* two things that must agree do not (headers, shapes) */
	D2V_EEMPTY = -8,   /* input is empty: no header at all */
};

#define D2V_ERR_MSG 512

typedef struct d2v_err {
	int code;              /* last D2V_E* code, 0 when none */
	char msg[D2V_ERR_MSG]; /* human-readable, no trailing newline */
} d2v_err;

/* Sets err (when not NULL) to code and a printf-style message; returns code. */
int d2v_err_set(d2v_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an existing message (for context such as a file name). */
void d2v_err_prefix(d2v_err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Copies src into dst (when dst is not NULL); returns src->code. */
int d2v_err_copy(d2v_err *dst, const d2v_err *src);

/* A short name for a code: "io", "format", "truncated"... */
const char *d2v_err_name(int code);

#endif
