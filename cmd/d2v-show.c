/*
 * d2v-show - print a tensor stream: header, one line per record, trailer.
 *
 * Usage: d2v-show [-n N] [--json | --check] [--masks] [--png DIR] [-o FILE]
 *                 [FILE ...]
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <png.h>

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
"      --masks       draw each copy of a mask: a grid of the image patches,\n"
"                    a strip for audio and text (# masked, . visible)\n"
"      --png DIR     write each image record as DIR/INDEX-ID-COPY.png with\n"
"                    the masked patches greyed out, one per mask copy\n"
"  -o, --output FILE write to FILE instead of standard output\n"
"  -q, --quiet       no warnings\n"
"  -h, --help        show this help and exit\n"
"      --version     show the version and exit\n"
"\n"
"Exit status: 0 ok, 1 bad or truncated input, 2 usage error.\n";

enum { OPT_JSON = 256, OPT_CHECK, OPT_VERSION, OPT_MASKS, OPT_PNG };

static const struct option longopts[] = {
	{"records", required_argument, NULL, 'n'},
	{"json", no_argument, NULL, OPT_JSON},
	{"check", no_argument, NULL, OPT_CHECK},
	{"masks", no_argument, NULL, OPT_MASKS},
	{"png", required_argument, NULL, OPT_PNG},
	{"output", required_argument, NULL, 'o'},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, OPT_VERSION},
	{NULL, 0, NULL, 0},
};

static struct {
	long max_records;  /* -1: all */
	int json, check, quiet, masks;
	const char *output;
	const char *png;   /* --png DIR */
} opt = {.max_records = -1};

static FILE *out;
static const json_t *header; /* the first header, for --masks and --png */

static void draw_masks(const d2v_record *rec, const d2v_tensor *mask);
static void write_pngs(const d2v_record *rec);

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

/* n bytes of s, printable: control bytes, DEL and backslash as C
 * escapes (\n, \t, \\, \x00), the rest (UTF-8 text) as they are */
static void
put_escaped(FILE *f, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '\\')
			fputs("\\\\", f);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c == '\r')
			fputs("\\r", f);
		else if (c < 0x20 || c == 0x7f)
			fprintf(f, "\\x%02x", c);
		else
			fputc(c, f);
	}
}

/* the id as a JSON string: as it is where it is UTF-8, else escaped */
static json_t *
id_json(const d2v_record *rec)
{
	json_t *v = json_stringn(rec->id, rec->id_len);
	char *buf;
	size_t len;
	FILE *m;

	if (v != NULL)
		return v;
	if ((m = open_memstream(&buf, &len)) == NULL)
		return json_string("?");
	put_escaped(m, rec->id, rec->id_len);
	fclose(m);
	v = json_stringn(buf, len);
	free(buf);
	return v ? v : json_string("?");
}

static void
show_record(const d2v_record *rec)
{
	char shape[128];

	if (opt.json) {
		json_t *j = json_pack("{s:s,s:I,s:o}", "type", "record",
		    "index", (json_int_t)rec->index, "id", id_json(rec));

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
	fprintf(out, "record %lld id=", (long long)rec->index);
	put_escaped(out, rec->id, rec->id_len);
	for (int i = 0; i < rec->nfields; i++) {
		const d2v_field *f = &rec->fields[i];

		if (f->kind == D2V_FIELD_INT)
			fprintf(out, " %s=%lld", f->key, (long long)f->i);
		else if (f->kind == D2V_FIELD_STR) {
			fprintf(out, " %s=", f->key);
			put_escaped(out, f->s, strlen(f->s));
		}
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
			if (opt.masks) {
				fputc('\n', out);
				draw_masks(rec, t);
				continue;
			}
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

/* ---- --masks and --png ------------------------------------------------ */

/* The patch grid of an image record with a mask of n tokens per row:
 * meta.mask.grid, else the image's H x W over meta.mask.patch, else a
 * square.  0 when the record is not an image or nothing fits. */
static int
mask_grid(const d2v_record *rec, int64_t n, int64_t *gh, int64_t *gw)
{
	const json_t *m = d2v_header_meta(header, "mask");
	const json_t *g = json_object_get(m, "grid");
	const d2v_tensor *x = d2v_record_tensor(rec, "x");
	const char *mod = d2v_header_modality(header);
	int64_t p = json_integer_value(json_object_get(m, "patch")), r;

	if (mod == NULL || strcmp(mod, "image") != 0)
		return 0;
	if (json_array_size(g) == 2) {
		*gh = json_integer_value(json_array_get(g, 0));
		*gw = json_integer_value(json_array_get(g, 1));
		if (*gh > 0 && *gh * *gw == n)
			return 1;
	}
	if (x != NULL && x->rank >= 2 && p > 0) {
		*gh = x->shape[x->rank - 2] / p;
		*gw = x->shape[x->rank - 1] / p;
		if (*gh > 0 && *gh * *gw == n)
			return 1;
	}
	r = (int64_t)llround(sqrt((double)n));
	if (r > 0 && r * r == n) {
		*gh = *gw = r;
		return 1;
	}
	return 0;
}

/* Each copy of mask [M, N] as characters: image grids side by side, or for
 * audio and text one strip per copy, wrapped at 100 tokens. */
static void
draw_masks(const d2v_record *rec, const d2v_tensor *mask)
{
	int64_t rows = mask->rank >= 2 ? mask->shape[0] : 1;
	int64_t n = rows > 0 ? d2v_tensor_numel(mask) / rows : 0, gh, gw;
	const uint8_t *m = mask->data;

	if (n == 0)
		return;
	if (mask_grid(rec, n, &gh, &gw)) {
		int64_t per = gw + 2 >= 72 ? 1 : 72 / (gw + 2);

		for (int64_t c0 = 0; c0 < rows; c0 += per) {
			int64_t c1 = c0 + per < rows ? c0 + per : rows;

			fputs("   ", out);
			for (int64_t c = c0; c < c1; c++)
				fprintf(out, " %-*lld ", (int)gw, (long long)c);
			fputc('\n', out);
			for (int64_t y = 0; y < gh; y++) {
				fputs("   ", out);
				for (int64_t c = c0; c < c1; c++) {
					const uint8_t *row = m + c * n + y * gw;

					fputc(' ', out);
					for (int64_t x = 0; x < gw; x++)
						fputc(row[x] ? '#' : '.', out);
					fputc(' ', out);
				}
				fputc('\n', out);
			}
		}
		return;
	}
	for (int64_t c = 0; c < rows; c++)
		for (int64_t i = 0; i < n; i += 100) {
			if (i == 0)
				fprintf(out, "    %3lld ", (long long)c);
			else
				fputs("        ", out);
			for (int64_t k = i; k < n && k < i + 100; k++)
				fputc(m[c * n + k] ? '#' : '.', out);
			fputc('\n', out);
		}
}

/* One PNG: pixels is (H, W, C) 8-bit, C 1 or 3. */
static int
png_write(const char *path, const uint8_t *pixels, int64_t h, int64_t w,
    int c)
{
	FILE *f = fopen(path, "wb");
	png_structp p = NULL;
	png_infop info = NULL;
	volatile int ok = 0;   /* set after setjmp */

	if (f == NULL)
		return -1;
	p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
	if (p != NULL)
		info = png_create_info_struct(p);
	if (p != NULL && info != NULL && setjmp(png_jmpbuf(p)) == 0) {
		png_init_io(p, f);
		png_set_IHDR(p, info, (png_uint_32)w, (png_uint_32)h, 8,
		    c == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY,
		    PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
		    PNG_FILTER_TYPE_DEFAULT);
		png_write_info(p, info);
		for (int64_t y = 0; y < h; y++)
			png_write_row(p, (png_const_bytep)(pixels + y * w * c));
		png_write_end(p, info);
		ok = 1;
	}
	png_destroy_write_struct(&p, &info);
	if (fclose(f) != 0)
		ok = 0;
	return ok ? 0 : -1;
}

/* --png: the record's image x [C, H, W] (or [H, W]) as 8-bit pixels, float
 * images scaled from their range, with the masked patches of each copy
 * greyed out; a record without a mask gives one plain picture. */
static void
write_pngs(const d2v_record *rec)
{
	const d2v_tensor *x = d2v_record_tensor(rec, "x");
	const d2v_tensor *mask = d2v_record_tensor(rec, "mask");
	const char *mod = d2v_header_modality(header);
	int64_t h, w, c, rows = 1, n = 0, gh = 0, gw = 0;
	uint8_t *img, *pic;
	char id[65], path[4096];
	double lo = 0, hi = 255;
	size_t k = 0;

	if (mod == NULL || strcmp(mod, "image") != 0 || x == NULL ||
	    x->rank < 2 || x->rank > 3)
		return;
	c = x->rank == 3 ? x->shape[0] : 1;
	h = x->shape[x->rank - 2];
	w = x->shape[x->rank - 1];
	if (h < 1 || w < 1 || c < 1 || h > 1 << 15 || w > 1 << 15)
		return;
	if (mask != NULL && mask->rank == 2 && mask->dtype == D2V_DTYPE_U8) {
		rows = mask->shape[0];
		n = mask->shape[1];
		if (!mask_grid(rec, n, &gh, &gw) || h % gh || w % gw) {
			d2v_warn("record %lld: the mask of %lld tokens fits no "
			    "patch grid of the %lldx%lld image; no PNG",
			    (long long)rec->index, (long long)n, (long long)h,
			    (long long)w);
			return;
		}
	}
	if (x->dtype != D2V_DTYPE_U8) {
		d2v_stats s;

		d2v_tensor_stats(x, &s);
		lo = s.n > 0 ? s.min : 0;
		hi = s.n > 0 && s.max > s.min ? s.max : lo + 1;
	}
	c = c == 3 ? 3 : 1;   /* RGB, or the first channel as grey */
	img = malloc((size_t)(h * w * c));
	pic = malloc((size_t)(h * w * c));
	if (img == NULL || pic == NULL)
		d2v_fatal(1, "out of memory");
	for (int64_t y = 0; y < h; y++)
		for (int64_t xx = 0; xx < w; xx++)
			for (int64_t ch = 0; ch < c; ch++) {
				double v = d2v_tensor_get(x, (ch * h + y) * w + xx);

				v = (v - lo) / (hi - lo) * 255.0;
				img[(y * w + xx) * c + ch] = (uint8_t)(v < 0 ? 0 :
				    v > 255 ? 255 : v + 0.5);
			}
	for (const char *s = rec->id; s < rec->id + rec->id_len &&
	    k < sizeof id - 1; s++, k++)
		id[k] = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || *s == '.' || *s == '-' ||
		    *s == '_' ? *s : '_';
	id[k] = '\0';
	for (int64_t r = 0; r < rows; r++) {
		memcpy(pic, img, (size_t)(h * w * c));
		if (n > 0) {
			const uint8_t *m = (const uint8_t *)mask->data + r * n;
			int64_t ph = h / gh, pw = w / gw;

			for (int64_t y = 0; y < h; y++)
				for (int64_t xx = 0; xx < w; xx++) {
					uint8_t *p = pic + (y * w + xx) * c;

					if (!m[(y / ph) * gw + xx / pw])
						continue;
					for (int64_t ch = 0; ch < c; ch++)
						p[ch] = (uint8_t)(128 +
						    (p[ch] - 128) / 4);
				}
			snprintf(path, sizeof path, "%s/%lld-%s-%lld.png",
			    opt.png, (long long)rec->index, id, (long long)r);
		} else {
			snprintf(path, sizeof path, "%s/%lld-%s.png", opt.png,
			    (long long)rec->index, id);
		}
		if (png_write(path, pic, h, w, (int)c) < 0)
			d2v_fatal(1, "write %s: %s", path, errno ? strerror(errno)
			    : "libpng error");
	}
	free(img);
	free(pic);
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
		case OPT_MASKS: opt.masks = 1; break;
		case OPT_PNG: opt.png = optarg; break;
		case 'o': opt.output = optarg; break;
		case 'q': opt.quiet = 1; break;
		case 'h': fputs(usage_text, stdout); return 0;
		case OPT_VERSION: d2v_version();
		default: d2v_usage("unknown option");
		}
	}
	if (opt.json && opt.check)
		d2v_usage("--json and --check cannot be used together");
	if (opt.masks && (opt.json || opt.check))
		d2v_usage("--masks draws text; it cannot be used with --json or "
		    "--check");
	if (opt.png != NULL && mkdir(opt.png, 0777) < 0 && errno != EEXIST)
		d2v_fatal(1, "mkdir %s: %s", opt.png, strerror(errno));
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
				header = first;
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
			if (opt.png != NULL)
				write_pngs(&rec);
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
