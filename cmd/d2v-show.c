/*
 * d2v-show - print a tensor stream: header, one line per record, trailer.
 *
 * Usage: d2v-show [-n N] [--json | --check] [-o FILE] [FILE ...]
 */
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "stream.h"

static const char usage_text[] =
"Usage: d2v-show [OPTION]... [FILE]...\n"
"Print a d2v tensor stream: the header, one line per record with each\n"
"tensor's dtype, shape and statistics, and the trailer.  Several FILEs (or\n"
"a concatenation on standard input) are read as one stream.  With no FILE,\n"
"or when FILE is -, read standard input.\n"
"\n"
"  -n, --records N   stop after N records\n"
"      --json        one JSON object per line (header, records, trailer)\n"
"      --check       only validate; print a summary; exit 1 on any problem\n"
"  -o, --output FILE write to FILE instead of standard output\n"
"  -q, --quiet       no warnings\n"
"  -h, --help        show this help and exit\n"
"      --version     show the version and exit\n"
"\n"
"Exit status: 0 ok, 1 bad or truncated input, 2 usage error.\n";

enum { OPT_JSON = 256, OPT_CHECK, OPT_VERSION };

static const struct option longopts[] = {
	{"records", required_argument, NULL, 'n'},
	{"json", no_argument, NULL, OPT_JSON},
	{"check", no_argument, NULL, OPT_CHECK},
	{"output", required_argument, NULL, 'o'},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, OPT_VERSION},
	{NULL, 0, NULL, 0},
};

static struct {
	long max_records;  /* -1: all */
	int json, check, quiet;
	const char *output;
} opt = {.max_records = -1};

static FILE *out;

/* JSON number that stays valid JSON for NaN and infinities (null). */
static json_t *
jnum(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
}

/* Per-row counts of ones in a mask-like u8 tensor: rows = shape[0] for
 * rank >= 2, one row otherwise. */
static void
mask_counts(const d2v_tensor *t, int64_t *ones, int64_t *rowmin,
    int64_t *rowmax, int64_t *rowlen)
{
	int64_t n = d2v_tensor_numel(t);
	int64_t rows = t->rank >= 2 ? t->shape[0] : 1;
	const uint8_t *m = t->data;

	*rowlen = rows > 0 ? n / rows : 0;
	*ones = 0;
	*rowmin = INT64_MAX;
	*rowmax = 0;
	for (int64_t r = 0; r < rows; r++) {
		int64_t c = 0;

		for (int64_t i = 0; i < *rowlen; i++)
			c += m[r * *rowlen + i] != 0;
		*ones += c;
		*rowmin = c < *rowmin ? c : *rowmin;
		*rowmax = c > *rowmax ? c : *rowmax;
	}
	if (rows == 0)
		*rowmin = 0;
}

static int
is_mask(const d2v_field *f)
{
	return f->t.dtype == D2V_DTYPE_U8 && strcmp(f->key, "mask") == 0;
}

static json_t *
tensor_json(const d2v_field *f)
{
	const d2v_tensor *t = &f->t;
	json_t *j = json_object(), *shape = json_array();

	for (int i = 0; i < t->rank; i++)
		json_array_append_new(shape, json_integer(t->shape[i]));
	json_object_set_new(j, "dtype", json_string(d2v_dtype_name(t->dtype)));
	json_object_set_new(j, "shape", shape);
	if (is_mask(f)) {
		int64_t ones, lo, hi, len;

		mask_counts(t, &ones, &lo, &hi, &len);
		json_object_set_new(j, "ones", json_integer(ones));
		json_object_set_new(j, "row_ones_min", json_integer(lo));
		json_object_set_new(j, "row_ones_max", json_integer(hi));
	} else {
		d2v_stats s;

		d2v_tensor_stats(t, &s);
		json_object_set_new(j, "min", jnum(s.min));
		json_object_set_new(j, "max", jnum(s.max));
		json_object_set_new(j, "mean", jnum(s.mean));
		json_object_set_new(j, "std", jnum(s.std));
		if (s.nonfinite > 0)
			json_object_set_new(j, "nonfinite",
			    json_integer(s.nonfinite));
	}
	return j;
}

static void
print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(7));

	if (s != NULL) {
		fputs(s, out);
		fputc('\n', out);
	}
	free(s);
}

static void
show_header(const json_t *h)
{
	const char *k;
	json_t *v, *stages = json_object_get(h, "stages");
	size_t i;

	if (opt.json) {
		print_json((json_t *)h);
		return;
	}
	fprintf(out, "header modality=%s stages=", d2v_header_modality(h));
	if (json_array_size(stages) == 0)
		fputs("(none)", out);
	json_array_foreach(stages, i, v)
		fprintf(out, "%s%s", i ? "," : "", json_string_value(v));
	fputc('\n', out);
	json_object_foreach(json_object_get(h, "meta"), k, v) {
		char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
		    JSON_REAL_PRECISION(7));

		fprintf(out, "  meta.%s %s\n", k, s ? s : "?");
		free(s);
	}
	json_object_foreach((json_t *)h, k, v) {
		char *s;

		if (!strcmp(k, "d2v") || !strcmp(k, "type") ||
		    !strcmp(k, "modality") || !strcmp(k, "stages") ||
		    !strcmp(k, "meta"))
			continue;
		s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
		fprintf(out, "  %s %s\n", k, s ? s : "?");
		free(s);
	}
}

static void
show_record(const d2v_record *rec)
{
	char shape[128];

	if (opt.json) {
		json_t *j = json_pack("{s:s,s:I,s:s}", "type", "record",
		    "index", (json_int_t)rec->index, "id", rec->id);

		for (int i = 0; i < rec->nfields; i++) {
			const d2v_field *f = &rec->fields[i];
			json_t *v = NULL;

			switch (f->kind) {
			case D2V_FIELD_TENSOR: v = tensor_json(f); break;
			case D2V_FIELD_INT: v = json_integer(f->i); break;
			case D2V_FIELD_STR: v = json_string(f->s); break;
			case D2V_FIELD_RAW:
				v = d2v_msgpack_to_json(f->raw, f->rawlen);
				break;
			}
			json_object_set_new(j, f->key, v ? v : json_null());
		}
		print_json(j);
		json_decref(j);
		return;
	}
	fprintf(out, "record %lld id=%s", (long long)rec->index, rec->id);
	for (int i = 0; i < rec->nfields; i++) {
		const d2v_field *f = &rec->fields[i];

		if (f->kind == D2V_FIELD_INT)
			fprintf(out, " %s=%lld", f->key, (long long)f->i);
		else if (f->kind == D2V_FIELD_STR)
			fprintf(out, " %s=%s", f->key, f->s);
		else if (f->kind == D2V_FIELD_RAW) {
			json_t *v = d2v_msgpack_to_json(f->raw, f->rawlen);
			char *s = v ? json_dumps(v, JSON_COMPACT |
			    JSON_ENCODE_ANY) : NULL;

			fprintf(out, " %s=%s", f->key, s ? s : "?");
			free(s);
			json_decref(v);
		}
	}
	fputc('\n', out);
	for (int i = 0; i < rec->nfields; i++) {
		const d2v_field *f = &rec->fields[i];
		const d2v_tensor *t = &f->t;

		if (f->kind != D2V_FIELD_TENSOR)
			continue;
		fprintf(out, "  %-10s %-4s %-14s", f->key,
		    d2v_dtype_name(t->dtype),
		    d2v_tensor_shape_str(t, shape, sizeof shape));
		if (is_mask(f)) {
			int64_t ones, lo, hi, len;

			mask_counts(t, &ones, &lo, &hi, &len);
			fprintf(out, " ones=%lld per-row=%lld..%lld of %lld",
			    (long long)ones, (long long)lo, (long long)hi,
			    (long long)len);
		} else {
			d2v_stats s;

			d2v_tensor_stats(t, &s);
			if (s.n > 0)
				fprintf(out, " min=%.6g mean=%.6g max=%.6g "
				    "std=%.6g", s.min, s.mean, s.max, s.std);
			if (s.nonfinite > 0)
				fprintf(out, " nonfinite=%lld",
				    (long long)s.nonfinite);
		}
		fputc('\n', out);
	}
}

int
main(int argc, char **argv)
{
	const char *stdin_only[] = {"-"};
	const char **files;
	int nfiles, c, status = 0, stopped = 0;
	json_t *first = NULL;
	int64_t records = 0;
	uint64_t bytes = 0;
	int streams = 0;
	d2v_record rec;
	d2v_out o;
	d2v_err err;

	d2v_cli_init("d2v-show", 0);
	while ((c = getopt_long(argc, argv, "n:o:qh", longopts, NULL)) != -1) {
		switch (c) {
		case 'n':
			opt.max_records = d2v_parse_long("-n", optarg, 0,
			    LONG_MAX);
			break;
		case OPT_JSON: opt.json = 1; break;
		case OPT_CHECK: opt.check = 1; break;
		case 'o': opt.output = optarg; break;
		case 'q': opt.quiet = 1; break;
		case 'h': fputs(usage_text, stdout); return 0;
		case OPT_VERSION: d2v_version();
		default: d2v_usage("unknown option");
		}
	}
	if (opt.json && opt.check)
		d2v_usage("--json and --check cannot be used together");
	files = argc > optind ? (const char **)argv + optind : stdin_only;
	nfiles = argc > optind ? argc - optind : 1;
	d2v_out_open(&o, opt.output, 0);
	out = d2v_out_file(&o);
	d2v_record_init(&rec);

	for (int fi = 0; fi < nfiles && !stopped && status == 0; fi++) {
		const char *name = strcmp(files[fi], "-") ? files[fi] : "stdin";
		int fd = d2v_open_in(files[fi]), rc;
		d2v_reader *r;

		if (d2v_reader_open_fd(&r, fd, name, &err) < 0)
			d2v_fatal(1, "%s", err.msg);
		rc = d2v_reader_begin(r, &err);
		if (rc == 0) {
			json_t *h = d2v_reader_header(r);

			if (first == NULL) {
				first = json_incref(h);
				if (!opt.check)
					show_header(h);
			} else if (d2v_header_compatible(first, h, &err) < 0) {
				d2v_err_prefix(&err, "%s", name);
				rc = err.code;
			}
		}
		while (rc == 0 && !stopped) {
			if (opt.max_records >= 0 && records >= opt.max_records) {
				stopped = 1;
				break;
			}
			rc = d2v_reader_next(r, &rec, &err);
			if (rc <= 0)
				break;
			rec.index = records++;
			if (!opt.check)
				show_record(&rec);
			rc = 0;
		}
		streams += d2v_reader_streams(r);
		bytes += d2v_reader_offset(r);
		d2v_reader_free(r);
		if (fd != 0)
			close(fd);
		if (rc < 0) {
			fflush(out);
			d2v_warn("%s", err.msg);
			status = 1;
		}
	}
	if (opt.check) {
		fprintf(out, "records %lld, bytes %llu, streams %d, errors %d\n",
		    (long long)records, (unsigned long long)bytes, streams,
		    status);
	} else if (status == 0 && !stopped) {
		if (opt.json) {
			json_t *t = json_pack("{s:s,s:I,s:i}", "type", "end",
			    "records", (json_int_t)records, "streams", streams);

			print_json(t);
			json_decref(t);
		} else {
			fprintf(out, "end records=%lld streams=%d\n",
			    (long long)records, streams);
		}
	}
	json_decref(first);
	d2v_record_clear(&rec);
	d2v_out_commit(&o);
	return status;
}
