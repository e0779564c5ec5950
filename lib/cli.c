/* cli.c - see cli.h. */
#include "cli.h"
#include "backend/gemm.h"
#include "backend/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *d2v_prog = "d2v";
static d2v_out *active_out; /* removed on a fatal error */

void
d2v_cli_init(const char *prog, int binary_output)
{
	d2v_prog = prog;
	if (binary_output)
		signal(SIGPIPE, SIG_IGN);
}

static void
vwarn(const char *fmt, va_list ap)
{
	fflush(stdout);
	fprintf(stderr, "%s: ", d2v_prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void
d2v_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vwarn(fmt, ap);
	va_end(ap);
}

void
d2v_fatal(int status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (active_out != NULL)
		d2v_out_abort(active_out);
	if (strstr(msg, strerror(EPIPE)) != NULL) {
		/* the reader of a pipe went away (| head, | d2v-show -n 1):
		 * end quietly, as a classic filter does, by SIGPIPE */
		signal(SIGPIPE, SIG_DFL);
		raise(SIGPIPE);
	}
	d2v_warn("%s", msg);
	exit(status);
}

void
d2v_usage(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vwarn(fmt, ap);
	va_end(ap);
	fprintf(stderr, "Try '%s --help' for more information.\n", d2v_prog);
	exit(2);
}

void
d2v_version(void)
{
	const char *bf16;

	d2v_backend_cpu_bf16(&bf16);
	printf("%s (d2v) %s\n", d2v_prog, D2V_VERSION);
	printf("GEMM engine: %s\n", d2v_gemm_engine());
	printf("bf16 GEMMs: %s\n", bf16);
	printf("CPU: %s\n", d2v_cpu_name());
	if (fflush(stdout) != 0 || ferror(stdout))
		exit(1);
	exit(0);
}

int
d2v_open_in(const char *path)
{
	int fd;

	if (path == NULL || strcmp(path, "-") == 0)
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		d2v_fatal(1, "open %s: %s", path, strerror(errno));
	return fd;
}

int
d2v_progress_enabled(int flag)
{
	return flag >= 0 ? flag : isatty(2);
}

long
d2v_parse_long(const char *opt, const char *s, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
		d2v_usage("%s: '%s' is not an integer in [%ld, %ld]", opt, s,
		    lo, hi);
	return v;
}

int
d2v_parse_precision(const char *s)
{
	if (strcmp(s, "fp32") && strcmp(s, "bf16"))
		d2v_usage("--precision: '%s' is not fp32 or bf16", s);
	return strcmp(s, "bf16") == 0;
}

int
d2v_parse_device(const char *s)
{
	if (strcmp(s, "cpu") && strcmp(s, "cuda"))
		d2v_usage("--device: '%s' is not cpu or cuda", s);
	return strcmp(s, "cuda") == 0;
}

const d2v_ops *
d2v_cli_backend(int cuda, int *bf16, int quiet)
{
	const char *why;
	const d2v_ops *o;
	d2v_err err;

	if (*bf16 < 0) /* no --precision: bf16 on a GPU, fp32 on the CPU */
		*bf16 = cuda;
	if (cuda) {
		if ((o = d2v_backend_cuda(*bf16, &err)) == NULL)
			d2v_fatal(1, "--device cuda: %s", err.msg);
		if (!quiet)
			d2v_warn("--device cuda: %s GEMMs (D2V_CUDA_DEVICE picks "
			    "the GPU)", *bf16 ? "bf16" : "fp32");
		return o;
	}
	if (!*bf16)
		return d2v_backend_cpu();
	o = d2v_backend_cpu_bf16(&why);
	if (!quiet)
		d2v_warn("--precision bf16: %s", why);
	return o;
}

double
d2v_parse_double(const char *opt, const char *s, double lo, double hi)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < lo ||
	    v > hi)
		d2v_usage("%s: '%s' is not a number in [%g, %g]", opt, s, lo, hi);
	return v;
}

void
d2v_out_open(d2v_out *o, const char *path, int binary)
{
	d2v_err err;

	memset(o, 0, sizeof *o);
	o->at.fd = -1;
	if (path == NULL || strcmp(path, "-") == 0) {
		o->fd = 1;
		o->name = "stdout";
		if (binary && isatty(1))
			d2v_usage("refusing to write a binary stream to a "
			    "terminal; redirect it (> file.d2v) or pipe it "
			    "(| d2v-show)");
		return;
	}
	o->path = strdup(path);
	if (o->path == NULL)
		d2v_fatal(1, "out of memory");
	o->name = o->path;
	if (d2v_atomic_open(&o->at, path, 0666, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	o->fd = o->at.fd;
	if (o->at.in_place && binary && isatty(o->fd)) {
		d2v_atomic_abort(&o->at);
		d2v_usage("refusing to write a binary stream to the terminal %s",
		    path);
	}
	active_out = o;
}

FILE *
d2v_out_file(d2v_out *o)
{
	if (o->fp == NULL) {
		if (o->fd == 1)
			o->fp = stdout;
		else if ((o->fp = fdopen(dup(o->fd), "w")) == NULL)
			d2v_fatal(1, "%s: %s", o->name, strerror(errno));
	}
	return o->fp;
}

void
d2v_out_commit(d2v_out *o)
{
	int bad = 0, e = 0;
	d2v_err err;

	if (o->fp != NULL && (fflush(o->fp) != 0 || ferror(o->fp))) {
		bad = 1;
		e = errno;
	}
	if (o->fp != NULL && o->fp != stdout) {
		if (fclose(o->fp) != 0 && !bad) {
			bad = 1;
			e = errno;
		}
	} else if (o->path == NULL && close(o->fd) != 0 && !bad &&
	    errno != EBADF) {
		bad = 1;
		e = errno;
	}
	o->fp = NULL;
	if (bad)
		d2v_fatal(1, "%s: write error: %s", o->name,
		    e ? strerror(e) : "unknown error");
	if (o->path != NULL && d2v_atomic_commit(&o->at, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	if (active_out == o)
		active_out = NULL;
	free(o->path);
	o->path = NULL;
}

void
d2v_out_abort(d2v_out *o)
{
	if (o->fp != NULL && o->fp != stdout)
		fclose(o->fp);
	o->fp = NULL;
	if (o->path != NULL)
		d2v_atomic_abort(&o->at);
	if (active_out == o)
		active_out = NULL;
}

double
d2v_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int
d2v_first_channels(d2v_reader *r, d2v_record *rec, const char *name)
{
	d2v_tensor *x;
	d2v_err err;
	int rc = d2v_reader_next(r, rec, &err);

	if (rc < 0)
		d2v_fatal(1, "%s", err.msg);
	if (rc == 0)
		d2v_fatal(1, "%s: no records", name);
	x = d2v_record_tensor(rec, "x");
	if (x == NULL || x->rank != 3 || x->shape[0] < 1 || x->shape[0] > 3)
		d2v_fatal(1, "%s: record %lld (%s): x must be u8 [C,H,W] with C "
		    "1 to 3", name, (long long)rec->index, d2v_cli_id(rec));
	return (int)x->shape[0];
}

const char *
d2v_channels_hint(const d2v_tensor *x, int c)
{
	return x != NULL && x->rank == 3 && x->shape[0] != c ? " (mixed grey "
	    "and colour sources: d2v-tokenize --channels 1 or 3)" : "";
}

const char *
d2v_cli_id(const d2v_record *rec)
{
	static __thread char buf[4][208];
	static __thread unsigned k;
	char *b = buf[k++ % 4];
	size_t o = 0, cap = sizeof buf[0];

	for (size_t i = 0; i < rec->id_len; i++) {
		unsigned char c = (unsigned char)rec->id[i];

		if (o + 8 >= cap) { /* room for an escape and the ellipsis */
			memcpy(b + o, "...", 4);
			return b;
		}
		if (c == '\\') {
			b[o++] = '\\';
			b[o++] = '\\';
		} else if (c < 0x20 || c == 0x7f) {
			o += (size_t)snprintf(b + o, cap - o, "\\x%02x", c);
		} else {
			b[o++] = (char)c;
		}
	}
	b[o] = '\0';
	return b;
}

long
d2v_header_int(const json_t *hdr, const char *stage, const char *key,
    long lo, long hi, long dflt, const char *name)
{
	json_t *v = json_object_get(d2v_header_meta(hdr, stage), key);
	json_int_t i;

	if (v == NULL || json_is_null(v))
		return dflt;
	if (!json_is_integer(v))
		d2v_fatal(1, "%s: the header's meta.%s.%s is not an integer",
		    name, stage, key);
	i = json_integer_value(v);
	if (i < lo || i > hi)
		d2v_fatal(1, "%s: the header's meta.%s.%s is %lld, not in [%ld, "
		    "%ld]", name, stage, key, (long long)i, lo, hi);
	return (long)i;
}

void
d2v_check_stream_model(const json_t *hdr, const d2v_config *c,
    const char *name)
{
	const char *mod = d2v_header_modality(hdr);

	if (mod == NULL || strcmp(mod, c->modality) != 0)
		d2v_fatal(1, "%s: a%s %s stream; the model is a%s %s model", name,
		    mod && strchr("aeiou", mod[0]) ? "n" : "", mod ? mod : "?",
		    strchr("aeiou", c->modality[0]) ? "n" : "", c->modality);
	if (d2v_config_is_image(c)) {
		long size = (long)json_integer_value(json_object_get(
		    d2v_header_meta(hdr, "tokenize"), "size"));

		if (size != c->image_size)
			d2v_fatal(1, "%s: images of size %ld; the model takes %d",
			    name, size, c->image_size);
	}
}

int
d2v_check_input(const d2v_record *rec, const d2v_config *c, const char *name)
{
	d2v_tensor *x = d2v_record_tensor(rec, "x");

	if (d2v_config_is_image(c)) {
		int S = c->image_size, C = c->channels;

		if (x == NULL || x->dtype != D2V_DTYPE_U8 || x->rank != 3 ||
		    x->shape[0] != C || x->shape[1] != S || x->shape[2] != S)
			d2v_fatal(1, "%s: record %lld (%s): x must be u8 [%d,%d,%d], "
			    "the model's image size and channels%s", name,
			    (long long)rec->index, d2v_cli_id(rec), C, S, S,
			    d2v_channels_hint(x, C));
		return 1;
	}
	if (strcmp(c->modality, "audio") == 0) {
		if (x == NULL || x->dtype != D2V_DTYPE_F32 || x->rank != 1)
			d2v_fatal(1, "%s: record %lld (%s): x must be f32 [samples] "
			    "(d2v-tokenize of audio)", name, (long long)rec->index,
			    d2v_cli_id(rec));
		if (x->shape[0] < 400 || x->shape[0] > INT_MAX / 2)
			d2v_fatal(1, "%s: record %lld (%s): %lld samples; the feature "
			    "encoder needs at least 400 (its receptive field, 25 ms "
			    "at 16 kHz)", name, (long long)rec->index,
			    d2v_cli_id(rec),
			    (long long)x->shape[0]);
		for (int64_t i = 0; i < x->shape[0]; i++)
			if (!isfinite(((const float *)x->data)[i]))
				d2v_fatal(1, "%s: record %lld (%s): sample %lld is not "
				    "a finite number", name, (long long)rec->index,
				    d2v_cli_id(rec), (long long)i);
		return (int)x->shape[0];
	}
	if (x == NULL || x->dtype != D2V_DTYPE_I32 || x->rank != 1 ||
	    x->shape[0] < 1)
		d2v_fatal(1, "%s: record %lld (%s): x must be i32 [tokens] "
		    "(d2v-tokenize --spm)", name, (long long)rec->index,
		    d2v_cli_id(rec));
	if (x->shape[0] > c->max_positions)
		d2v_fatal(1, "%s: record %lld (%s): %lld tokens; the model's "
		    "position table holds %d (d2v-tokenize --block)", name,
		    (long long)rec->index, d2v_cli_id(rec),
		    (long long)x->shape[0],
		    c->max_positions);
	for (int64_t i = 0; i < x->shape[0]; i++) {
		int32_t id = ((const int32_t *)x->data)[i];

		if (id < 0 || id >= c->vocab)
			d2v_fatal(1, "%s: record %lld (%s): token %lld has id %d, "
			    "outside the model's vocabulary of %d", name,
			    (long long)rec->index, d2v_cli_id(rec),
			    (long long)i, (int)id,
			    c->vocab);
	}
	return (int)x->shape[0];
}

const int32_t *
d2v_check_x_masked(const d2v_record *rec, const d2v_config *c,
    const char *name, int N)
{
	d2v_tensor *xm = d2v_record_tensor(rec, "x_masked");
	const int32_t *ids;

	if (xm == NULL || xm->dtype != D2V_DTYPE_I32 || xm->rank != 2 ||
	    xm->shape[0] != 1 || xm->shape[1] != N)
		d2v_fatal(1, "%s: record %lld (%s): the v1 text objective needs "
		    "x_masked i32 [1,%d], the BERT-masked ids (d2v-mask "
		    "--strategy bert)", name, (long long)rec->index,
		    d2v_cli_id(rec), N);
	ids = xm->data;
	for (int i = 0; i < N; i++)
		if (ids[i] < 0 || ids[i] >= c->vocab)
			d2v_fatal(1, "%s: record %lld (%s): x_masked token %d has id "
			    "%d, outside the model's vocabulary of %d", name,
			    (long long)rec->index, d2v_cli_id(rec), i,
			    (int)ids[i], c->vocab);
	return ids;
}

int32_t
d2v_check_mask_id(const json_t *hdr, const d2v_config *c, const char *name)
{
	json_t *mk = d2v_header_meta(hdr, "mask");
	json_t *mid = json_object_get(mk, "mask_id");
	const char *st = json_string_value(json_object_get(mk, "strategy"));

	if (!json_is_integer(mid) || json_integer_value(mid) < 0 ||
	    json_integer_value(mid) >= c->vocab)
		d2v_fatal(1, "%s: masks of strategy %s without a <mask> id "
		    "(meta.mask.mask_id); the v1 text objective needs x_masked "
		    "from d2v-mask --strategy bert", name, st ? st : "(none)");
	return (int32_t)json_integer_value(mid);
}
