/*
 * d2v-tokenize - images, audio and text into a tensor stream: the front end
 * of every pipeline (DATA2VEC.md section 2).
 *
 * Usage: d2v-tokenize [OPTION]... [FILE]...
 *
 * The main thread reads the inputs (paths, IDX images or text lines) in
 * order and hands them to a d2v_pool; workers decode and augment; the main
 * thread writes the results in input order.  Every random choice about
 * input i comes from d2v_rng_seed(seed, i, view), so the output bytes do
 * not depend on -j.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "input/audio.h"
#include "input/files.h"
#include "input/idx.h"
#include "input/image.h"
#include "input/text.h"
#include "pool.h"
#include "rng.h"
#include "stream.h"

static const char usage_text[] =
"Usage: d2v-tokenize [OPTION]... [FILE]...\n"
"Turn images, audio or text into a d2v tensor stream of x records.\n"
"FILEs are JPEG or audio files (with no FILE, or for -, one path per line\n"
"on standard input, optionally PATH<TAB>LABEL), class folders with\n"
"--label-from dir, or text files with --spm (standard input by default).\n"
"\n"
"  -m, --modality M      image, audio or text (default: from the inputs)\n"
"  -j, --jobs N          decode with N threads, 0 for one per CPU (1)\n"
"      --seed N          seed of every random choice (1)\n"
"      --views N         N augmented views of each input (1)\n"
"      --crop MODE       random, center or none (random)\n"
"      --strict          stop at the first bad input (exit 1)\n"
"      --label-from dir  FILE is a folder of class folders\n"
"Images:\n"
"  -s, --size N          output side in pixels (224)\n"
"      --channels N      1 or 3 (default: 1 for grey sources, else 3)\n"
"      --scale LO,HI     random crop area fraction (0.2,1)\n"
"      --ratio LO,HI     random crop aspect ratio (0.75,1.3333333)\n"
"      --crop-pct P      centre crop: size / resized short side (0.875)\n"
"      --flip P          horizontal flip probability (0.5 for random crops,\n"
"                        0 otherwise)\n"
"      --jitter B,C,S    colour jitter: brightness, contrast, saturation (0)\n"
"      --interpolation I bicubic or bilinear (bicubic)\n"
"      --mean M[,M,M]    normalisation mean for the header (ImageNet)\n"
"      --std S[,S,S]     normalisation std for the header (ImageNet)\n"
"      --no-dct          always decode JPEGs at full size\n"
"      --idx FILE        an IDX image archive (MNIST family, .gz or not)\n"
"      --idx-labels FILE its IDX label archive\n"
"Audio:\n"
"      --min-samples N   skip clips shorter than N samples at 16 kHz (32000)\n"
"      --max-samples N   crop clips longer than N samples (320000)\n"
"      --resampler Q     best, medium or fastest (medium)\n"
"Text:\n"
"      --spm MODEL       sentencepiece model; inputs are text lines\n"
"      --break-mode M    none, complete_doc or line (none)\n"
"      --block N         tokens per record, BOS included (512)\n"
"      --labeled         lines are LABEL<TAB>TEXT (with --break-mode line)\n"
"Output:\n"
"  -o, --output FILE     write to FILE instead of standard output\n"
"  -q, --quiet           no warnings and no summary\n"
"      --progress, --no-progress  force the progress line on or off\n"
"  -h, --help            show this help and exit\n"
"      --version         show the version and exit\n"
"\n"
"Exit status: 0 ok (bad inputs are skipped and counted), 1 runtime error or\n"
"a bad input with --strict, 2 usage error.\n";

enum {
	OPT_SEED = 256, OPT_VIEWS, OPT_CROP, OPT_STRICT, OPT_LABEL_FROM,
	OPT_CHANNELS, OPT_SCALE, OPT_RATIO, OPT_CROP_PCT, OPT_FLIP, OPT_JITTER,
	OPT_INTERP, OPT_MEAN, OPT_STD, OPT_NO_DCT, OPT_IDX, OPT_IDX_LABELS,
	OPT_MIN_SAMPLES, OPT_MAX_SAMPLES, OPT_RESAMPLER, OPT_SPM,
	OPT_BREAK_MODE, OPT_BLOCK, OPT_LABELED, OPT_PROGRESS, OPT_NO_PROGRESS,
	OPT_VERSION,
};

static const struct option longopts[] = {
	{"modality", required_argument, NULL, 'm'},
	{"jobs", required_argument, NULL, 'j'},
	{"seed", required_argument, NULL, OPT_SEED},
	{"views", required_argument, NULL, OPT_VIEWS},
	{"crop", required_argument, NULL, OPT_CROP},
	{"strict", no_argument, NULL, OPT_STRICT},
	{"label-from", required_argument, NULL, OPT_LABEL_FROM},
	{"size", required_argument, NULL, 's'},
	{"channels", required_argument, NULL, OPT_CHANNELS},
	{"scale", required_argument, NULL, OPT_SCALE},
	{"ratio", required_argument, NULL, OPT_RATIO},
	{"crop-pct", required_argument, NULL, OPT_CROP_PCT},
	{"flip", required_argument, NULL, OPT_FLIP},
	{"jitter", required_argument, NULL, OPT_JITTER},
	{"interpolation", required_argument, NULL, OPT_INTERP},
	{"mean", required_argument, NULL, OPT_MEAN},
	{"std", required_argument, NULL, OPT_STD},
	{"no-dct", no_argument, NULL, OPT_NO_DCT},
	{"idx", required_argument, NULL, OPT_IDX},
	{"idx-labels", required_argument, NULL, OPT_IDX_LABELS},
	{"min-samples", required_argument, NULL, OPT_MIN_SAMPLES},
	{"max-samples", required_argument, NULL, OPT_MAX_SAMPLES},
	{"resampler", required_argument, NULL, OPT_RESAMPLER},
	{"spm", required_argument, NULL, OPT_SPM},
	{"break-mode", required_argument, NULL, OPT_BREAK_MODE},
	{"block", required_argument, NULL, OPT_BLOCK},
	{"labeled", no_argument, NULL, OPT_LABELED},
	{"output", required_argument, NULL, 'o'},
	{"quiet", no_argument, NULL, 'q'},
	{"progress", no_argument, NULL, OPT_PROGRESS},
	{"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, OPT_VERSION},
	{NULL, 0, NULL, 0},
};

enum { MOD_AUTO, MOD_IMAGE, MOD_AUDIO, MOD_TEXT };
static const char *const modality_names[] = {"auto", "image", "audio",
    "text", NULL};
static const char *const crop_names[] = {"random", "center", "none", NULL};
static const char *const interp_names[] = {"bicubic", "bilinear", NULL};
static const char *const resampler_names[] = {"best", "medium", "fastest",
    NULL};
static const char *const break_names[] = {"none", "complete_doc", "line",
    NULL};

#define AUDIO_RATE 16000
#define FILE_LIMIT ((size_t)1 << 31)  /* the largest input file read */

static struct {
	int modality, jobs, views, strict, quiet, progress, label_dir;
	int flip_set;             /* --flip given */
	uint64_t seed;
	const char *output;
	d2v_augment aug;          /* images; aug.crop is shared with audio */
	double mean[3], std[3];
	int nmean, nstd;
	const char *idx, *idx_labels;
	long min_samples, max_samples;
	int resampler;
	const char *spm;
	int break_mode, block, labeled;
} opt = {
	.jobs = 1, .views = 1, .seed = 1, .progress = -1,
	.min_samples = 32000, .max_samples = 320000,
	.resampler = D2V_RESAMPLE_MEDIUM, .block = 512,
	.break_mode = D2V_BREAK_NONE,
};

/* ==== options =========================================================== */

static int
parse_name(const char *optname, const char *s, const char *const *names)
{
	for (int i = 0; names[i] != NULL; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	d2v_usage("%s: unknown value '%s'", optname, s);
}

/* Parses "A[,B[,C]]" into v (at most max numbers in [lo, hi]); returns the
 * count. */
static int
parse_list(const char *optname, const char *s, double *v, int max,
    double lo, double hi)
{
	char buf[256], *tok, *save = NULL;
	int n = 0;

	if (strlen(s) >= sizeof buf)
		d2v_usage("%s: value too long", optname);
	strcpy(buf, s);
	for (tok = strtok_r(buf, ",", &save); tok != NULL;
	    tok = strtok_r(NULL, ",", &save)) {
		if (n == max)
			d2v_usage("%s: at most %d numbers", optname, max);
		v[n++] = d2v_parse_double(optname, tok, lo, hi);
	}
	if (n == 0)
		d2v_usage("%s: no number", optname);
	return n;
}

static void
parse_range(const char *optname, const char *s, double *v, double lo,
    double hi)
{
	if (parse_list(optname, s, v, 2, lo, hi) != 2 || v[0] > v[1] ||
	    v[1] <= 0)
		d2v_usage("%s: want LO,HI with 0 < HI and LO <= HI", optname);
}

static void
parse_image_option(int c, const char *arg)
{
	d2v_augment *a = &opt.aug;
	double j[3];
	int n;

	switch (c) {
	case 's': a->size = (int)d2v_parse_long("--size", arg, 1, 8192); break;
	case OPT_CHANNELS:
		a->channels = (int)d2v_parse_long("--channels", arg, 1, 3);
		if (a->channels == 2)
			d2v_usage("--channels: 1 or 3");
		break;
	case OPT_SCALE: parse_range("--scale", arg, a->scale, 0, 1); break;
	case OPT_RATIO: parse_range("--ratio", arg, a->ratio, 0, 100); break;
	case OPT_CROP_PCT:
		a->crop_pct = d2v_parse_double("--crop-pct", arg, 0.01, 1);
		break;
	case OPT_FLIP:
		a->flip = d2v_parse_double("--flip", arg, 0, 1);
		opt.flip_set = 1;
		break;
	case OPT_JITTER:
		n = parse_list("--jitter", arg, j, 3, 0, 10);
		for (int k = 0; k < 3; k++)
			a->jitter[k] = j[n == 1 ? 0 : k];
		if (n == 2)
			d2v_usage("--jitter: one value or three (B,C,S)");
		break;
	case OPT_INTERP:
		a->interp = parse_name("--interpolation", arg, interp_names);
		break;
	case OPT_MEAN:
		opt.nmean = parse_list("--mean", arg, opt.mean, 3, -1e6, 1e6);
		break;
	case OPT_STD:
		opt.nstd = parse_list("--std", arg, opt.std, 3, 1e-9, 1e6);
		break;
	case OPT_NO_DCT: a->dct = 0; break;
	}
}

static void
parse_option(int c, const char *arg)
{
	switch (c) {
	case 'm': opt.modality = parse_name("--modality", arg, modality_names);
		break;
	case 'j': opt.jobs = (int)d2v_parse_long("-j", arg, 0, 256); break;
	case OPT_SEED:
		opt.seed = (uint64_t)d2v_parse_long("--seed", arg, 0, LONG_MAX);
		break;
	case OPT_VIEWS:
		opt.views = (int)d2v_parse_long("--views", arg, 1, 1000);
		break;
	case OPT_CROP: opt.aug.crop = parse_name("--crop", arg, crop_names);
		break;
	case OPT_STRICT: opt.strict = 1; break;
	case OPT_LABEL_FROM:
		if (strcmp(arg, "dir") != 0)
			d2v_usage("--label-from: only 'dir' is known");
		opt.label_dir = 1;
		break;
	case OPT_IDX: opt.idx = arg; break;
	case OPT_IDX_LABELS: opt.idx_labels = arg; break;
	case OPT_MIN_SAMPLES:
		opt.min_samples = d2v_parse_long("--min-samples", arg, 0,
		    INT_MAX);
		break;
	case OPT_MAX_SAMPLES:
		opt.max_samples = d2v_parse_long("--max-samples", arg, 1,
		    INT_MAX);
		break;
	case OPT_RESAMPLER:
		opt.resampler = parse_name("--resampler", arg, resampler_names);
		break;
	case OPT_SPM: opt.spm = arg; break;
	case OPT_BREAK_MODE:
		opt.break_mode = parse_name("--break-mode", arg, break_names);
		break;
	case OPT_BLOCK:
		opt.block = (int)d2v_parse_long("--block", arg, 2, 1 << 20);
		break;
	case OPT_LABELED: opt.labeled = 1; break;
	case 'o': opt.output = arg; break;
	case 'q': opt.quiet = 1; break;
	case OPT_PROGRESS: opt.progress = 1; break;
	case OPT_NO_PROGRESS: opt.progress = 0; break;
	default: parse_image_option(c, arg); break;
	}
}

/* Checks that the options agree with each other and the modality. */
static void
check_options(int nfiles)
{
	if (opt.aug.crop != D2V_CROP_RANDOM && !opt.flip_set)
		opt.aug.flip = 0;  /* evaluation crops are not flipped */
	if (opt.jobs == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		opt.jobs = n < 1 ? 1 : n > 256 ? 256 : (int)n;
	}
	if (opt.spm != NULL && opt.modality != MOD_AUTO &&
	    opt.modality != MOD_TEXT)
		d2v_usage("--spm is for text, not %s",
		    modality_names[opt.modality]);
	if (opt.modality == MOD_TEXT && opt.spm == NULL)
		d2v_usage("text needs a sentencepiece model (--spm MODEL)");
	if (opt.idx != NULL && (opt.modality == MOD_AUDIO ||
	    opt.modality == MOD_TEXT || opt.spm != NULL))
		d2v_usage("--idx archives hold images");
	if (opt.idx != NULL && (nfiles > 0 || opt.label_dir))
		d2v_usage("--idx takes no FILE arguments");
	if (opt.idx_labels != NULL && opt.idx == NULL)
		d2v_usage("--idx-labels needs --idx");
	if (opt.label_dir && nfiles != 1)
		d2v_usage("--label-from dir takes one folder");
	if (opt.label_dir && opt.spm != NULL)
		d2v_usage("--label-from dir is for images and audio");
	if (opt.labeled && opt.break_mode != D2V_BREAK_LINE)
		d2v_usage("--labeled needs --break-mode line");
	if (opt.spm != NULL && opt.views > 1)
		d2v_usage("--views is for images and audio");
	if ((opt.nmean == 3 || opt.nstd == 3) && opt.aug.channels == 1)
		d2v_usage("--mean and --std need one value with --channels 1");
}

/* ==== inputs ============================================================ */

/* One input and, once a worker has seen it, its result. */
typedef struct item {
	int64_t index;         /* position among the inputs: the RNG key */
	char *name;            /* path, archive:index, or file:line */
	const uint8_t *pixels; /* an IDX image (H, W, C), borrowed */
	char *text;            /* a text line (len bytes), owned */
	size_t len;
	int64_t label;
	int has_label, empty;
	/* results */
	int rc;                /* 0, or a D2V_E* code with err */
	int too_short;         /* an audio clip under --min-samples */
	d2v_err err;
	d2v_record *recs;      /* recs is (nrecs): one per view */
	int nrecs;
	int32_t *ids;          /* text: ids is (nids) */
	int64_t nids;
} item;

static void
item_free(item *it)
{
	for (int v = 0; v < it->nrecs; v++)
		d2v_record_clear(&it->recs[v]);
	free(it->recs);
	free(it->name);
	free(it->text);
	free(it->ids);
	free(it);
}

/* A new input numbered index, named by a printf format. */
__attribute__((format(printf, 2, 3)))
static item *
item_new(int64_t index, const char *fmt, ...)
{
	item *it = calloc(1, sizeof *it);
	va_list ap;
	int n;

	if (it == NULL)
		d2v_fatal(1, "out of memory");
	va_start(ap, fmt);
	n = vasprintf(&it->name, fmt, ap);
	va_end(ap);
	if (n < 0)
		d2v_fatal(1, "out of memory");
	it->index = index;
	return it;
}

/* Where the inputs come from, read in order by the main thread. */
typedef struct source {
	char **files;          /* files is (nfiles): FILE arguments */
	int nfiles, fi;
	FILE *fp;              /* the list or text file being read */
	const char *fpname;
	int64_t line;          /* line number in fp */
	int64_t next;          /* inputs handed out so far */
	d2v_filelist list;     /* --label-from dir */
	d2v_idx images, labels;/* --idx */
	int64_t nimages;
	const char *idxname;
	int h, w, c;           /* IDX image size */
	char *buf;             /* getline buffer */
	size_t cap;
	int64_t bad_lines;     /* list lines that named no input */
} source;

/* Opens the next FILE (or stdin) for reading lines; 0 when none is left. */
static int
source_open_next(source *s)
{
	for (;;) {
		const char *f;

		if (s->fi >= (s->nfiles ? s->nfiles : 1))
			return 0;
		f = s->nfiles ? s->files[s->fi] : "-";
		s->fi++;
		s->line = 0;
		if (strcmp(f, "-") == 0) {
			s->fp = stdin;
			s->fpname = "stdin";
			return 1;
		}
		if ((s->fp = fopen(f, "r")) != NULL) {
			s->fpname = f;
			return 1;
		}
		if (opt.strict)
			d2v_fatal(1, "open %s: %m", f);
		if (!opt.quiet)
			d2v_warn("open %s: %m", f);
		s->bad_lines++;
	}
}

/* The next line of the open file, without its newline; NULL (and the file
 * closed) at its end. */
static char *
read_line(source *s, size_t *len)
{
	ssize_t n = getline(&s->buf, &s->cap, s->fp);

	if (n < 0) {
		if (ferror(s->fp))
			d2v_fatal(1, "read %s: %m", s->fpname);
		if (s->fp != stdin)
			fclose(s->fp);
		s->fp = NULL;
		return NULL;
	}
	s->line++;
	if (n > 0 && s->buf[n - 1] == '\n')
		s->buf[--n] = '\0';
	if (n > 0 && s->buf[n - 1] == '\r')
		s->buf[--n] = '\0';
	*len = (size_t)n;
	return s->buf;
}

/* The next line of the text files; NULL at the end of the last. */
static char *
source_line(source *s, size_t *len)
{
	char *line;

	do {
		if (s->fp == NULL && !source_open_next(s))
			return NULL;
	} while ((line = read_line(s, len)) == NULL);
	return line;
}

/* Splits "TEXT<TAB>LABEL" (label last) or "LABEL<TAB>TEXT" (label first);
 * returns 0, or -1 when the label is not an integer. */
static int
split_label(char *line, int label_first, int64_t *label, char **rest)
{
	char *tab = label_first ? strchr(line, '\t') : strrchr(line, '\t');
	char *num, *end;
	long long v;

	*rest = line;
	if (tab == NULL)
		return label_first ? -1 : 1;
	*tab = '\0';
	num = label_first ? line : tab + 1;
	*rest = label_first ? tab + 1 : line;
	errno = 0;
	v = strtoll(num, &end, 10);
	/* a class index: 0 or more, and no wider than a stream's int (an
	 * overflow is refused, not clamped) */
	if (end == num || *end != '\0' || errno == ERANGE || v < 0)
		return -1;
	*label = v;
	return 0;
}

/* The next path input: from --label-from dir, or a list line, or FILE. */
static item *
next_path(source *s)
{
	item *it;
	char *line, *path;
	int64_t label = 0;
	size_t len;
	int rc;

	if (opt.label_dir) {
		if (s->next >= s->list.n)
			return NULL;
		it = item_new(s->next, "%s", s->list.paths[s->next]);
		it->label = s->list.labels[s->next];
		it->has_label = 1;
		s->next++;
		return it;
	}
	do {  /* FILE arguments are paths; "-" (or none) is a list of them */
		if (s->fp == NULL) {
			if (s->fi >= (s->nfiles ? s->nfiles : 1))
				return NULL;
			if (s->nfiles > 0 && strcmp(s->files[s->fi], "-") != 0)
				return item_new(s->next++, "%s",
				    s->files[s->fi++]);
			source_open_next(s);
		}
	} while ((line = read_line(s, &len)) == NULL || len == 0);
	rc = split_label(line, 0, &label, &path);
	it = item_new(s->next++, "%s", path);
	it->label = label;
	it->has_label = rc == 0;
	if (rc < 0)
		it->rc = d2v_err_set(&it->err, D2V_EFORMAT, "%s:%lld: the "
		    "label after the tab is not a class index (an integer from "
		    "0 to 2^63-1)", s->fpname, (long long)s->line);
	return it;
}

static item *
next_idx(source *s)
{
	item *it;

	if (s->next >= s->nimages)
		return NULL;
	it = item_new(s->next, "%s:%lld", s->idxname, (long long)s->next);
	it->pixels = d2v_idx_image(&s->images, s->next);
	if (s->labels.data != NULL) {
		it->label = d2v_idx_label(&s->labels, s->next);
		it->has_label = 1;
	}
	s->next++;
	return it;
}

static item *
next_text(source *s)
{
	char *line, *text;
	item *it;
	size_t len;
	int rc = 0;

	if ((line = source_line(s, &len)) == NULL)
		return NULL;
	it = item_new(s->next++, "%s:%lld", s->fpname, (long long)s->line);
	text = line;
	if (opt.labeled && len > 0 && (rc = split_label(line, 1, &it->label,
	    &text)) < 0)
		it->rc = d2v_err_set(&it->err, D2V_EFORMAT, "want "
		    "LABEL<TAB>TEXT with a class index (an integer from 0 "
		    "to 2^63-1) for LABEL");
	it->has_label = opt.labeled && rc == 0;
	it->len = len - (size_t)(text - line);
	it->empty = it->len == 0;
	if ((it->text = malloc(it->len + 1)) == NULL)
		d2v_fatal(1, "out of memory");
	memcpy(it->text, text, it->len);
	it->text[it->len] = '\0';
	return it;
}

static item *
source_next(source *s, int modality)
{
	if (modality == MOD_TEXT)
		return next_text(s);
	if (opt.idx != NULL)
		return next_idx(s);
	return next_path(s);
}

/* ==== work (on the pool's threads) ===================================== */

typedef struct context {
	int modality;
	d2v_jpeg **jpeg;       /* jpeg is (jobs): one decoder per worker */
	d2v_text text;
	source *src;
} context;

static int
record_new(item *it, int v, d2v_tensor *x)
{
	d2v_record *rec = &it->recs[v];
	char *id = NULL;
	int rc;

	d2v_record_init(rec);
	it->nrecs = v + 1;
	if (opt.views > 1 && asprintf(&id, "%s#%d", it->name, v) < 0)
		return d2v_err_set(&it->err, D2V_ENOMEM, "out of memory");
	rc = d2v_record_set_id(rec, id ? id : it->name, &it->err);
	free(id);
	if (rc < 0 || d2v_record_set_tensor(rec, "x", x, &it->err) < 0 ||
	    (it->has_label && d2v_record_set_int(rec, "label", it->label,
	    &it->err) < 0))
		return it->err.code;
	return 0;
}

/* Renders the views of src (drawn for its full W x H) into records. */
static int
image_views(item *it, const d2v_image *src, const d2v_view *views, int w,
    int h)
{
	int c = opt.aug.channels ? opt.aug.channels : src->c, rc;

	for (int v = 0; v < opt.views; v++) {
		int64_t shape[3] = {c, opt.aug.size, opt.aug.size};
		d2v_tensor x;

		if ((rc = d2v_tensor_init(&x, D2V_DTYPE_U8, 3, shape,
		    &it->err)) < 0)
			return rc;
		if ((rc = d2v_view_render(&views[v], &opt.aug, src, w, h,
		    x.data, &it->err)) < 0 || (rc = record_new(it, v, &x)) < 0) {
			d2v_tensor_free(&x);
			return rc;
		}
	}
	return 0;
}

static int
image_work(context *cx, item *it, int worker, d2v_view *views)
{
	d2v_image img = {0};
	unsigned char *buf = NULL;
	size_t len = 0;
	int w, h, c, need_w = 0, need_h = 0, rc;
	d2v_box reg = {0, 0, 0, 0}; /* all the views read, full-size pixels */

	if (it->pixels != NULL) {   /* IDX: no decoding */
		img = (d2v_image){.h = cx->src->h, .w = cx->src->w,
		    .c = cx->src->c, .fw = cx->src->w, .fh = cx->src->h,
		    .px = (uint8_t *)it->pixels};
		w = img.w, h = img.h;
	} else if ((rc = d2v_file_read(it->name, FILE_LIMIT, &buf, &len,
	    &it->err)) < 0 || (rc = d2v_jpeg_info(cx->jpeg[worker], buf, len,
	    &w, &h, &c, &it->err)) < 0) {
		free(buf);
		return rc;
	}
	for (int v = 0; v < opt.views; v++) {
		d2v_rng r;

		d2v_rng_seed(&r, opt.seed, (uint64_t)it->index, (uint64_t)v);
		d2v_view_draw(&views[v], &opt.aug, w, h, &r);
		need_w = views[v].need_w > need_w ? views[v].need_w : need_w;
		need_h = views[v].need_h > need_h ? views[v].need_h : need_h;
		if (it->pixels == NULL) {
			d2v_box b;
			double x1, y1;

			d2v_view_region(&views[v], &opt.aug, w, h, &b);
			if (v == 0) {
				reg = b;
				continue;
			}
			x1 = fmax(reg.x + reg.w, b.x + b.w);
			y1 = fmax(reg.y + reg.h, b.y + b.h);
			reg.x = fmin(reg.x, b.x);
			reg.y = fmin(reg.y, b.y);
			reg.w = x1 - reg.x;
			reg.h = y1 - reg.y;
		}
	}
	if (it->pixels == NULL) {
		rc = d2v_jpeg_decode(cx->jpeg[worker], buf, len,
		    opt.aug.channels, need_w, need_h, &reg, &img, &it->err);
		free(buf);
		if (rc < 0)
			return rc;
	}
	rc = image_views(it, &img, views, w, h);
	if (it->pixels == NULL)
		d2v_image_free(&img);
	return rc;
}

/* Crops the normalised clip x (T) into one record per view. */
static int
audio_views(item *it, const float *x, int64_t t)
{
	for (int v = 0; v < opt.views; v++) {
		int64_t n = t, off = 0;
		d2v_tensor out;
		d2v_rng r;
		int rc;

		if (opt.aug.crop != D2V_CROP_NONE && t > opt.max_samples) {
			n = opt.max_samples;
			d2v_rng_seed(&r, opt.seed, (uint64_t)it->index,
			    (uint64_t)v);
			off = opt.aug.crop == D2V_CROP_CENTER ? (t - n) / 2 :
			    (int64_t)d2v_rng_below(&r, (uint64_t)(t - n + 1));
		}
		if ((rc = d2v_tensor_init(&out, D2V_DTYPE_F32, 1, &n,
		    &it->err)) < 0)
			return rc;
		memcpy(out.data, x + off, (size_t)n * sizeof *x);
		if ((rc = record_new(it, v, &out)) < 0) {
			d2v_tensor_free(&out);
			return rc;
		}
	}
	return 0;
}

static int
audio_work(item *it)
{
	unsigned char *buf;
	size_t len;
	float *x;
	int64_t t;
	int rc;

	if ((rc = d2v_file_read(it->name, FILE_LIMIT, &buf, &len,
	    &it->err)) < 0)
		return rc;
	rc = d2v_audio_decode(buf, len, AUDIO_RATE, opt.resampler, &x, &t,
	    NULL, &it->err);
	free(buf);
	if (rc < 0)
		return rc;
	if (t < opt.min_samples) {
		it->too_short = 1;
		free(x);
		return 0;
	}
	d2v_audio_normalize(x, t);  /* fairseq: whole utterance, then crop */
	rc = audio_views(it, x, t);
	free(x);
	return rc;
}

static void
work(void *ctx, void *p, int worker)
{
	context *cx = ctx;
	item *it = p;
	d2v_view *views;

	if (it->rc < 0)
		return;
	if (cx->modality == MOD_TEXT) {
		if (!it->empty)
			it->rc = d2v_text_encode(&cx->text, it->text, it->len,
			    &it->ids, &it->nids, &it->err);
		return;
	}
	it->recs = calloc((size_t)opt.views, sizeof *it->recs);
	views = calloc((size_t)opt.views, sizeof *views);
	if (it->recs == NULL || views == NULL)
		it->rc = d2v_err_set(&it->err, D2V_ENOMEM, "out of memory");
	else if (cx->modality == MOD_IMAGE)
		it->rc = image_work(cx, it, worker, views);
	else
		it->rc = audio_work(it);
	free(views);
}

/* ==== output (main thread) ============================================= */

typedef struct output {
	d2v_out out;
	d2v_writer *w;
	d2v_packer packer;
	const item *cur;       /* the text line being packed */
	char *pending;         /* name of the line the pending block began in */
	source *src;
	int64_t written, skipped, short_clips;
	int progress;
	double last_progress;
} output;

static void
show_progress(output *o, int final)
{
	double t;

	if (!o->progress)
		return;
	t = d2v_now();
	if (!final && t - o->last_progress < 0.25)
		return;
	o->last_progress = t;
	fprintf(stderr, "\r%s: %lld records, %lld skipped%s", d2v_prog,
	    (long long)o->written, (long long)o->skipped, final ? "\n" : "");
}

static void
write_record(output *o, const d2v_record *rec)
{
	d2v_err err;

	if (d2v_writer_record(o->w, rec, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	o->written++;
	show_progress(o, 0);
}

/* The packer's callback: one text block becomes one record. */
static int
emit_block(void *ctx, const int32_t *x, int64_t t, int64_t tag,
    int64_t offset, d2v_err *err)
{
	output *o = ctx;
	d2v_record rec;
	d2v_tensor tx;
	const char *from = tag == o->cur->index || o->pending == NULL ?
	    o->cur->name : o->pending;
	char *id;
	int rc;

	if ((rc = d2v_tensor_init(&tx, D2V_DTYPE_I32, 1, &t, err)) < 0)
		return rc;
	memcpy(tx.data, x, (size_t)t * sizeof *x);
	if ((offset ? asprintf(&id, "%s+%lld", from, (long long)offset) :
	    asprintf(&id, "%s", from)) < 0)
		d2v_fatal(1, "out of memory");
	d2v_record_init(&rec);
	if ((rc = d2v_record_set_id(&rec, id, err)) == 0 &&
	    (rc = d2v_record_set_tensor(&rec, "x", &tx, err)) == 0 &&
	    (!o->cur->has_label ||
	    (rc = d2v_record_set_int(&rec, "label", o->cur->label, err)) == 0))
		write_record(o, &rec);
	free(id);
	d2v_tensor_free(&tx);
	d2v_record_clear(&rec);
	return rc;
}

/* Packs one text line; the last line stays alive (o->cur) for the ids of
 * blocks still pending. */
static void
emit_text(output *o, item *it)
{
	d2v_err err;

	o->cur = it;
	if (d2v_packer_add(&o->packer, it->ids, it->nids, it->empty,
	    it->index, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	if (o->packer.len > 0 && o->packer.tag == it->index) {
		free(o->pending);
		if ((o->pending = strdup(it->name)) == NULL)
			d2v_fatal(1, "out of memory");
	}
}

/* Writes an item's records, or warns about it and counts it; frees it. */
static void
emit_item(output *o, d2v_pool *pool, item *it)
{
	d2v_err err;

	if (it->rc < 0) {
		o->skipped++;
		if (opt.strict) {
			if (d2v_writer_flush(o->w, &err) < 0)
				d2v_fatal(1, "%s", err.msg);
			d2v_pool_free(pool);  /* no thread runs on at exit */
			d2v_fatal(1, "%s: %s (--strict: stopping)", it->name,
			    it->err.msg);
		}
		if (!opt.quiet)
			d2v_warn("%s: %s", it->name, it->err.msg);
	} else if (it->too_short) {
		o->skipped++;
		o->short_clips++;
	} else if (it->text != NULL) {
		const item *prev = o->cur;

		emit_text(o, it);
		if (prev != NULL)
			item_free((item *)prev);
		return;
	} else {
		for (int v = 0; v < it->nrecs; v++)
			write_record(o, &it->recs[v]);
	}
	item_free(it);
}

/* Feeds every input through the pool and writes the results in order. */
static void
run(output *o, source *s, context *cx, item *first)
{
	d2v_pool *pool;
	item *it, *done;
	d2v_err err;
	int depth = opt.jobs * 4;

	if (d2v_pool_new(&pool, opt.jobs, depth, work, cx, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	for (it = first; it != NULL; it = source_next(s, cx->modality))
		if ((done = d2v_pool_submit(pool, it)) != NULL)
			emit_item(o, pool, done);
	while ((done = d2v_pool_drain(pool)) != NULL)
		emit_item(o, pool, done);
	d2v_pool_free(pool);
	o->skipped += s->bad_lines;
}

/* ==== header ============================================================ */

static json_t *
jarray(const double *v, int n)
{
	json_t *a = json_array();

	for (int i = 0; i < n; i++)
		json_array_append_new(a, json_real(v[i]));
	return a;
}

/* mean and std for c channels (0: unknown, three values kept). */
static void
add_norm(json_t *m, int c)
{
	static const double mean[3] = {0.485, 0.456, 0.406};
	static const double std[3] = {0.229, 0.224, 0.225};
	const double *src[2] = {opt.nmean ? opt.mean : mean,
	    opt.nstd ? opt.std : std};
	int given[2] = {opt.nmean ? opt.nmean : 3, opt.nstd ? opt.nstd : 3};
	const char *key[2] = {"mean", "std"};

	for (int k = 0; k < 2; k++) {
		double v[3], n = c == 1 ? 1 : 3;

		if (given[k] == 3 && n == 1 && (k ? opt.nstd : opt.nmean))
			d2v_usage("--%s: one value for one channel", key[k]);
		for (int i = 0; i < n; i++)
			v[i] = given[k] == 1 ? src[k][0] : n == 1 ?
			    (src[k][0] + src[k][1] + src[k][2]) / 3 : src[k][i];
		json_object_set_new(m, key[k], jarray(v, (int)n));
	}
}

static const char *
base_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s != NULL ? s + 1 : path;
}

static json_t *
image_meta(const source *s)
{
	const d2v_augment *a = &opt.aug;
	int c = a->channels ? a->channels : opt.idx ? s->c : 0;
	json_t *m = json_pack("{s:i,s:i,s:s,s:s,s:o,s:o,s:f,s:f,s:o,s:s,s:b}",
	    "size", a->size, "channels", c, "layout", "CHW",
	    "crop", crop_names[a->crop], "scale", jarray(a->scale, 2),
	    "ratio", jarray(a->ratio, 2), "crop_pct", a->crop_pct,
	    "flip", a->flip, "jitter", jarray(a->jitter, 3),
	    "interpolation", interp_names[a->interp], "dct_scaling", a->dct);

	add_norm(m, c);
	json_object_set_new(m, "source", json_string(opt.idx ? "idx" :
	    "jpeg"));
	if (opt.idx != NULL)
		json_object_set_new(m, "idx", json_string(base_name(opt.idx)));
	if (opt.idx_labels != NULL)
		json_object_set_new(m, "idx_labels",
		    json_string(base_name(opt.idx_labels)));
	return m;
}

static json_t *
audio_meta(void)
{
	return json_pack("{s:i,s:I,s:I,s:s,s:s,s:s}", "sample_rate",
	    AUDIO_RATE, "min_samples", (json_int_t)opt.min_samples,
	    "max_samples", (json_int_t)opt.max_samples,
	    "crop", crop_names[opt.aug.crop], "normalize", "utterance",
	    "resampler", resampler_names[opt.resampler]);
}

static json_t *
text_meta(const d2v_vocab *v)
{
	return json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:s,s:s,s:i,s:s,s:b}",
	    "vocab_size", v->size, "spm_vocab", v->spm_size, "bos", v->bos,
	    "eos", v->eos, "pad", v->pad, "unk", v->unk, "mask", v->mask,
	    "spm_sha256", v->sha256, "spm_model", base_name(opt.spm),
	    "block", opt.block, "break_mode", break_names[opt.break_mode],
	    "labeled", opt.labeled);
}

static json_t *
make_header(int modality, const source *s, const context *cx)
{
	json_t *h = d2v_header_new(modality_names[modality]), *m;
	d2v_err err;

	if (modality == MOD_TEXT)
		m = text_meta(&cx->text.vocab);
	else
		m = modality == MOD_IMAGE ? image_meta(s) : audio_meta();
	if (h == NULL || m == NULL)
		d2v_fatal(1, "out of memory");
	if (modality != MOD_TEXT) {
		json_object_set_new(m, "seed", json_integer((json_int_t)opt.seed));
		json_object_set_new(m, "views", json_integer(opt.views));
	}
	if (opt.label_dir) {
		json_t *names = json_array();

		for (int k = 0; k < s->list.nclasses; k++)
			json_array_append_new(names,
			    json_string(s->list.classes[k]));
		json_object_set_new(m, "classes", names);
	}
	if (d2v_header_add_stage(h, "tokenize", m, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	return h;
}

/* ==== setup ============================================================= */

static void
load_idx(source *s)
{
	d2v_err err;

	if (d2v_idx_load(&s->images, opt.idx, &err) < 0 ||
	    d2v_idx_images(&s->images, &s->nimages, &s->h, &s->w, &s->c,
	    &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	s->idxname = base_name(opt.idx);
	if (opt.idx_labels != NULL &&
	    (d2v_idx_load(&s->labels, opt.idx_labels, &err) < 0 ||
	    d2v_idx_labels(&s->labels, s->nimages, &err) < 0))
		d2v_fatal(1, "%s: %s", opt.idx_labels, err.msg);
}

/* Lists a class-folder tree; with no --modality, the kind of file found
 * there decides. */
static int
scan_dir(source *s, int modality)
{
	d2v_filelist other;
	d2v_err err;

	if (d2v_filelist_scan(&s->list, s->files[0], modality == MOD_AUDIO ?
	    D2V_KIND_AUDIO : D2V_KIND_IMAGE, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	if (modality != MOD_AUTO)
		return modality;
	if (d2v_filelist_scan(&other, s->files[0], D2V_KIND_AUDIO, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	if (s->list.n > 0 && other.n > 0)
		d2v_usage("%s holds both images and audio; choose one with "
		    "--modality", s->files[0]);
	if (other.n > 0) {
		d2v_filelist_free(&s->list);
		s->list = other;
		return MOD_AUDIO;
	}
	d2v_filelist_free(&other);
	return MOD_IMAGE;
}

/* The modality of a path input: by its name, else by its first bytes. */
static int
sniff(const item *it)
{
	unsigned char head[16];
	size_t n = 0;
	int kind = d2v_kind_of_name(it->name);
	FILE *f;

	if (kind == D2V_KIND_UNKNOWN && (f = fopen(it->name, "rb")) != NULL) {
		n = fread(head, 1, sizeof head, f);
		fclose(f);
		kind = d2v_kind_of_bytes(head, n);
	}
	if (kind == D2V_KIND_UNKNOWN) {
		struct stat st;

		if (stat(it->name, &st) == 0 && S_ISDIR(st.st_mode))
			d2v_usage("%s is a directory: give the files in it, or "
			    "--label-from dir for a folder of class folders",
			    it->name);
		d2v_usage("cannot tell whether %s is an image or audio; choose "
		    "with --modality", it->name);
	}
	return kind == D2V_KIND_IMAGE ? MOD_IMAGE : MOD_AUDIO;
}

/* Opens the inputs, settles the modality and returns the first input. */
static item *
setup(source *s, context *cx)
{
	int m = opt.modality;
	item *first;
	d2v_err err;

	if (opt.spm != NULL)
		m = MOD_TEXT;
	if (opt.idx != NULL) {
		m = MOD_IMAGE;
		load_idx(s);
	}
	if (opt.label_dir)
		m = scan_dir(s, m);
	first = source_next(s, m == MOD_TEXT ? MOD_TEXT : MOD_IMAGE);
	if (m == MOD_AUTO)
		m = first != NULL ? sniff(first) : MOD_IMAGE;
	if (m == MOD_TEXT && d2v_text_load(&cx->text, opt.spm, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	if (m == MOD_IMAGE && opt.idx == NULL) {
		if ((cx->jpeg = calloc((size_t)opt.jobs, sizeof *cx->jpeg)) ==
		    NULL)
			d2v_fatal(1, "out of memory");
		for (int i = 0; i < opt.jobs; i++)
			if (d2v_jpeg_new(&cx->jpeg[i], &err) < 0)
				d2v_fatal(1, "%s", err.msg);
	}
	cx->modality = m;
	cx->src = s;
	return first;
}

static void
cleanup(source *s, context *cx, output *o)
{
	if (cx->jpeg != NULL)
		for (int i = 0; i < opt.jobs; i++)
			d2v_jpeg_free(cx->jpeg[i]);
	free(cx->jpeg);
	d2v_text_free(&cx->text);
	d2v_filelist_free(&s->list);
	d2v_idx_free(&s->images);
	d2v_idx_free(&s->labels);
	free(s->buf);
	if (s->fp != NULL && s->fp != stdin)
		fclose(s->fp);
	if (o->cur != NULL)
		item_free((item *)o->cur);
	free(o->pending);
	d2v_packer_free(&o->packer);
	d2v_writer_free(o->w);
}

static void
summary(const output *o)
{
	if (opt.quiet)
		return;
	if (o->short_clips > 0)
		d2v_warn("wrote %lld records, skipped %lld (%lld shorter than "
		    "--min-samples)", (long long)o->written,
		    (long long)o->skipped, (long long)o->short_clips);
	else
		d2v_warn("wrote %lld records, skipped %lld",
		    (long long)o->written, (long long)o->skipped);
}

int
main(int argc, char **argv)
{
	source src = {0};
	context cx = {0};
	output o = {0};
	item *first;
	json_t *hdr;
	d2v_err err;
	int c;

	d2v_cli_init("d2v-tokenize", 1);
	d2v_augment_defaults(&opt.aug);
	while ((c = getopt_long(argc, argv, "m:j:s:o:qh", longopts, NULL)) !=
	    -1) {
		if (c == 'h') {
			fputs(usage_text, stdout);
			return 0;
		}
		if (c == OPT_VERSION)
			d2v_version();
		if (c == '?' || c == ':')
			d2v_usage("unknown option or missing value");
		parse_option(c, optarg);
	}
	check_options(argc - optind);
	src.files = argv + optind;
	src.nfiles = argc - optind;
	first = setup(&src, &cx);
	hdr = make_header(cx.modality, &src, &cx);
	d2v_out_open(&o.out, opt.output, 1);
	o.progress = d2v_progress_enabled(opt.progress);
	if (d2v_writer_open_fd(&o.w, o.out.fd, o.out.name, &err) < 0 ||
	    d2v_writer_header(o.w, hdr, &err) < 0 ||
	    (cx.modality == MOD_TEXT && d2v_packer_init(&o.packer,
	    opt.break_mode, opt.block, &cx.text.vocab, emit_block, &o,
	    &err) < 0))
		d2v_fatal(1, "%s", err.msg);
	json_decref(hdr);
	run(&o, &src, &cx, first);
	if ((cx.modality == MOD_TEXT && d2v_packer_finish(&o.packer, &err) < 0)
	    || d2v_writer_end(o.w, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	show_progress(&o, 1);
	cleanup(&src, &cx, &o);
	d2v_out_commit(&o.out);
	summary(&o);
	return 0;
}
