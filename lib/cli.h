/*
 * cli.h - what every d2v command shares (libd2vcli, linked by cmd/ only).
 *
 * Unlike libd2v, this part prints and exits: it is the commands' side of the
 * error idiom.  Diagnostics look like "d2v-show: in.d2v: record 3, byte 96:
 * truncated: ...".  Exit status: 0 ok, 1 data or runtime error, 2 usage.
 *
 *     d2v_cli_init("d2v-mask", 1);        // binary output: SIGPIPE -> EPIPE
 *     d2v_out out;
 *     d2v_out_open(&out, opt_o, 1);       // "-" or NULL: stdout; refuses a tty
 *     ... write to out.fd ...
 *     d2v_out_commit(&out);               // file: fsync + rename; stdout: checked close
 *
 * An output file is written atomically (atomic.h): to an unnamed temporary
 * beside it, named and renamed over it only on success, so no half-written
 * file is left behind, even after SIGKILL; a symbolic link is written
 * through, its target replaced; an existing path that is not a regular file
 * (/dev/null, a FIFO) is written in place: a rename would replace the device
 * or the pipe.
 */
#ifndef D2V_CLI_H
#define D2V_CLI_H

#include <stdio.h>

#include "atomic.h"
#include "backend/ops.h"
#include "model/config.h"
#include "stream.h"

#define D2V_VERSION "0.1.0"

extern const char *d2v_prog;

/* Sets the program name; with binary output, ignores SIGPIPE so that a
 * closed pipe becomes a reported write error. */
void d2v_cli_init(const char *prog, int binary_output);
void d2v_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn, format(printf, 2, 3)))
void d2v_fatal(int status, const char *fmt, ...);
/* A usage error: the message, a hint to --help, exit 2. */
__attribute__((noreturn, format(printf, 1, 2)))
void d2v_usage(const char *fmt, ...);
/* Prints "prog (d2v) VERSION" and exits 0. */
__attribute__((noreturn)) void d2v_version(void);

/* Opens path for reading ("-" or NULL: stdin); exits 1 on failure. */
int d2v_open_in(const char *path);
/* Whether to draw a progress line: flag 1/0 forces, -1 means stderr is a tty. */
int d2v_progress_enabled(int flag);
/* Seconds on the monotonic clock, for rates and progress lines. */
double d2v_now(void);

/* For an image stream whose header leaves the channels to the images
 * (tokenize meta "channels": 0, JPEGs tokenized without --channels): reads
 * the first record into rec and returns the channels of its x, 1 to 3.
 * Exits 1 on a read error, an empty stream or a record without such an x;
 * the caller then treats rec as its first record. */
int d2v_first_channels(d2v_reader *r, d2v_record *rec, const char *name);
/* The suffix for a message about a record whose x (rank 3) has other
 * channels than c: the fix for mixed grey and colour sources, else "". */
const char *d2v_channels_hint(const d2v_tensor *x, int c);

/* Checks that a stream header's modality (and image size) is the model's;
 * exits 1 naming the stream otherwise. */
/* A record's id for a message: control bytes and backslashes escaped
 * (\x1b, \\), NUL bytes kept (\x00), cut with "..." past about 200
 * bytes; one of four buffers of the calling thread, in turn. */
const char *d2v_cli_id(const d2v_record *rec);
/* An integer of the header's meta.STAGE.KEY: dflt when absent; exits 1
 * naming it when it is not an integer in [lo, hi]. */
long d2v_header_int(const json_t *hdr, const char *stage, const char *key,
    long lo, long hi, long dflt, const char *name);
void d2v_check_stream_model(const json_t *hdr, const d2v_config *c,
    const char *name);
/* Checks record rec's x against the model: u8 [C,S,S] (images), f32 [S]
 * (audio), i32 [N] with ids in [0, vocab) (text).  Returns its length:
 * samples or tokens (1 for images).  Exits 1 naming the stream and the
 * record otherwise. */
int d2v_check_input(const d2v_record *rec, const d2v_config *c,
    const char *name);
/* v1 text: checks record rec's x_masked, i32 [1,N] with ids in [0, vocab),
 * and returns its N ids.  Exits 1 naming the stream and the record
 * otherwise. */
const int32_t *d2v_check_x_masked(const d2v_record *rec,
    const d2v_config *c, const char *name, int N);
/* v1 text: the <mask> id of stream hdr's masks (meta.mask.mask_id, in
 * [0, vocab)).  Exits 1 naming the stream otherwise. */
int32_t d2v_check_mask_id(const json_t *hdr, const d2v_config *c,
    const char *name);

/* Parsers for option values; a bad value is a usage error naming opt. */
long d2v_parse_long(const char *opt, const char *s, long lo, long hi);
double d2v_parse_double(const char *opt, const char *s, double lo, double hi);
/* --precision: 0 for fp32, 1 for bf16. */
int d2v_parse_precision(const char *s);
/* --device: 0 for cpu, 1 for cuda. */
int d2v_parse_device(const char *s);
/* The backend for --device and --precision.  *bf16 -1 (no --precision)
 * becomes the device's default: 1 on cuda, 0 on the CPU.  On the CPU, bf16
 * is the bf16 table, with a notice (unless quiet) of which engine runs its
 * products.  cuda without a usable GPU, or in a build without the CUDA
 * backend, exits 1 saying why: never a fall back to the CPU. */
const d2v_ops *d2v_cli_backend(int cuda, int *bf16, int quiet);

typedef struct d2v_out {
	int fd;          /* where to write */
	FILE *fp;        /* stdio on fd, opened on demand by d2v_out_file() */
	char *path;      /* the path named, NULL for stdout */
	d2v_atomic at;   /* the file's atomic write (at.fd is fd) */
	const char *name;/* for messages: the path or "stdout" */
} d2v_out;

/* Opens the output: path NULL or "-" is stdout.  With binary set, refuses a
 * terminal on stdout (exit 2 with a hint to redirect). */
void d2v_out_open(d2v_out *o, const char *path, int binary);
/* A stdio stream on the output (for text). */
FILE *d2v_out_file(d2v_out *o);
/* Finishes the output: flush, fsync and rename a file; a checked close of
 * stdout that reports EPIPE and ENOSPC.  Exits 1 on failure. */
void d2v_out_commit(d2v_out *o);
/* Removes a temporary output file (called by d2v_fatal). */
void d2v_out_abort(d2v_out *o);

#endif
