/*
 * d2v-eval - frozen-feature evaluation of a checkpoint: linear probe and
 * k-NN accuracy, representation statistics and the held-out pretraining
 * loss, against a random encoder and raw pixels in the same table.
 *
 * Usage: d2v-eval [-c CHECKPOINT] --train FILE --test FILE [OPTION]...
 */
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "eval/probe.h"
#include "eval/stats.h"
#include "model/model.h"
#include "stream.h"
#include "train/checkpoint.h"

static const char usage_text[] =
"Usage: d2v-eval [-c CHECKPOINT] --train FILE --test FILE [OPTION]...\n"
"Evaluate a checkpoint's frozen encoder on two labelled, unmasked streams\n"
"(image, audio or text): a linear probe (L2-regularised logistic regression, the L2\n"
"chosen on a held-out slice of the training stream) and a weighted k-NN\n"
"classifier, both fit on the training stream and scored on the test\n"
"stream, plus the features' mean per-dimension std and effective rank on\n"
"the test stream; a table on standard output.\n"
"\n"
"  -c, --checkpoint PATH  the checkpoint (d2v-train)\n"
"      --train FILE       labelled training stream (- for standard input)\n"
"      --test FILE        labelled test stream\n"
"      --layer L          block whose output is the feature (0-based over\n"
"                         all blocks, -1 = last; default -1)\n"
"      --pool P           mean (over the patches, frames or tokens; the\n"
"                         default) or cls (images)\n"
"      --student          the student's weights (the default: the\n"
"                         reference fine-tunes and probes the student)\n"
"      --teacher          the EMA teacher's weights instead\n"
"      --baseline B       also evaluate B: random (the same architecture,\n"
"                         randomly initialised) or input (the normalised\n"
"                         pixels, flattened; audio: the mean log spectrum\n"
"                         of 25 ms frames; text: token frequencies);\n"
"                         repeatable, or random,input\n"
"      --masked FILE      report the pretraining loss on this masked stream\n"
"      --limit N          use the first N records of each stream\n"
"      --limit-train N, --limit-test N   the same for one stream\n"
"      --l2 X             fix the probe's L2 weight instead of selecting it\n"
"      --holdout F        fraction of the training stream held out to\n"
"                         select the L2 weight (default 0.1)\n"
"      --max-iter N       L-BFGS iterations at most per fit (default 1000)\n"
"      --tol X            L-BFGS stops when every gradient component is\n"
"                         below X (default 1e-5)\n"
"      --knn K            neighbours (default 20)\n"
"      --temperature T    k-NN vote weight exp(s/T) (default 0.07)\n"
"      --seed N           random encoder and held-out slice (default 1)\n"
"  -b, --batch N          samples per forward pass (default 64)\n"
"      --json FILE        also write the report as JSON to FILE (- for\n"
"                         standard output, instead of the table)\n"
"  -o, --output FILE      write the table to FILE instead of standard output\n"
"      --progress, --no-progress   force the progress line on or off\n"
"  -q, --quiet  -h, --help  --version\n";

enum {
	O_TRAIN = 256, O_TEST, O_LAYER, O_POOL, O_STUDENT, O_TEACHER, O_BASELINE,
	O_MASKED, O_LIMIT, O_LIMIT_TRAIN, O_LIMIT_TEST, O_L2, O_HOLDOUT, O_MAXITER, O_TOL, O_KNN, O_TEMP, O_SEED,
	O_JSON, O_PROGRESS, O_NO_PROGRESS, O_VERSION
};

static const struct option longopts[] = {
	{"checkpoint", required_argument, NULL, 'c'},
	{"train", required_argument, NULL, O_TRAIN},
	{"test", required_argument, NULL, O_TEST},
	{"layer", required_argument, NULL, O_LAYER},
	{"pool", required_argument, NULL, O_POOL},
	{"student", no_argument, NULL, O_STUDENT},
	{"teacher", no_argument, NULL, O_TEACHER},
	{"baseline", required_argument, NULL, O_BASELINE},
	{"masked", required_argument, NULL, O_MASKED},
	{"limit", required_argument, NULL, O_LIMIT},
	{"limit-train", required_argument, NULL, O_LIMIT_TRAIN},
	{"limit-test", required_argument, NULL, O_LIMIT_TEST},
	{"l2", required_argument, NULL, O_L2},
	{"holdout", required_argument, NULL, O_HOLDOUT},
	{"max-iter", required_argument, NULL, O_MAXITER},
	{"tol", required_argument, NULL, O_TOL},
	{"knn", required_argument, NULL, O_KNN},
	{"temperature", required_argument, NULL, O_TEMP},
	{"seed", required_argument, NULL, O_SEED},
	{"batch", required_argument, NULL, 'b'},
	{"json", required_argument, NULL, O_JSON},
	{"output", required_argument, NULL, 'o'},
	{"progress", no_argument, NULL, O_PROGRESS},
	{"no-progress", no_argument, NULL, O_NO_PROGRESS},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, O_VERSION},
	{NULL, 0, NULL, 0},
};

static struct {
	const char *ckpt, *train, *test, *masked, *json, *output;
	int layer, cls, student, weights_given, random, input, progress, quiet;
	int knn;
	long limit, limit_train, limit_test, batch, max_iter, seed;
	double l2, holdout, temperature, tol;
} opt = {
	.tol = 1e-5, .student = 1,
	.layer = -1, .progress = -1, .knn = 20, .batch = 64,
	.limit = -1, .limit_train = -1, .limit_test = -1,
	.max_iter = 1000, .seed = 1, .holdout = 0.1, .temperature = 0.07,
};

/* One row of the table: an encoder and its features on both streams. */
typedef struct row {
	const char *name;       /* pretrained, random, input */
	const float *params;    /* the encoder's weights; NULL for input */
	int dim;
	float *tr, *te;         /* (n_train, dim), (n_test, dim) */
	d2v_linear_result lin;
	double knn, std, erank, secs;
} row;

/* bins of the audio input baseline's spectrum: 0 to 8 kHz at 40 Hz */
#define SPEC_BINS 201

static d2v_model m;
static char modality[16];             /* of the streams */
static const char *unit = "images";   /* what a record is, for messages */
static int vocab, audio_seen;         /* text vocabulary; audio seen */
static int have_model, S, C;          /* image size and channels */
static double mean_[3], std_[3];      /* input normalisation */
static row rows[3];
static int nrows;
static int *ytr, *yte;
static long ntr, nte;
static int progress;

static void
parse_baseline(const char *s)
{
	char *copy = strdup(s), *tok, *save = NULL;

	if (copy == NULL)
		d2v_fatal(1, "out of memory");
	for (tok = strtok_r(copy, ",", &save); tok;
	    tok = strtok_r(NULL, ",", &save)) {
		if (strcmp(tok, "random") == 0)
			opt.random = 1;
		else if (strcmp(tok, "input") == 0)
			opt.input = 1;
		else
			d2v_usage("--baseline: '%s' is not random or input", tok);
	}
	free(copy);
}

static void
parse_args(int argc, char **argv)
{
	int c;

	while ((c = getopt_long(argc, argv, "c:b:o:qh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': opt.ckpt = optarg; break;
		case 'b': opt.batch = d2v_parse_long("--batch", optarg, 1, 4096); break;
		case 'o': opt.output = optarg; break;
		case 'q': opt.quiet = 1; break;
		case 'h': fputs(usage_text, stdout); exit(0);
		case O_VERSION: d2v_version();
		case O_TRAIN: opt.train = optarg; break;
		case O_TEST: opt.test = optarg; break;
		case O_LAYER: opt.layer = (int)d2v_parse_long("--layer", optarg, -1, 4096); break;
		case O_POOL:
			if (strcmp(optarg, "mean") == 0)
				opt.cls = 0;
			else if (strcmp(optarg, "cls") == 0)
				opt.cls = 1;
			else
				d2v_usage("--pool: '%s' is not mean or cls", optarg);
			break;
		case O_STUDENT:
		case O_TEACHER:
			if (opt.weights_given && opt.student != (c == O_STUDENT))
				d2v_usage("--teacher and --student exclude each other");
			opt.student = c == O_STUDENT;
			opt.weights_given = 1;
			break;
		case O_BASELINE: parse_baseline(optarg); break;
		case O_MASKED: opt.masked = optarg; break;
		case O_LIMIT: opt.limit = d2v_parse_long("--limit", optarg, 1, LONG_MAX); break;
		case O_LIMIT_TRAIN: opt.limit_train = d2v_parse_long("--limit-train", optarg, 1, LONG_MAX); break;
		case O_LIMIT_TEST: opt.limit_test = d2v_parse_long("--limit-test", optarg, 1, LONG_MAX); break;
		case O_L2: opt.l2 = d2v_parse_double("--l2", optarg, 1e-12, 1e6); break;
		case O_HOLDOUT: opt.holdout = d2v_parse_double("--holdout", optarg, 0, 0.9); break;
		case O_MAXITER: opt.max_iter = d2v_parse_long("--max-iter", optarg, 1, 1000000); break;
		case O_TOL: opt.tol = d2v_parse_double("--tol", optarg, 1e-12, 1); break;
		case O_KNN: opt.knn = (int)d2v_parse_long("--knn", optarg, 1, 10000); break;
		case O_TEMP: opt.temperature = d2v_parse_double("--temperature", optarg, 1e-6, 1e6); break;
		case O_SEED: opt.seed = d2v_parse_long("--seed", optarg, 0, LONG_MAX); break;
		case O_JSON: opt.json = optarg; break;
		case O_PROGRESS: opt.progress = 1; break;
		case O_NO_PROGRESS: opt.progress = 0; break;
		default: d2v_usage("unknown option");
		}
	}
	if (opt.limit_train < 0)
		opt.limit_train = opt.limit;
	if (opt.limit_test < 0)
		opt.limit_test = opt.limit;
	if (optind < argc)
		d2v_usage("unexpected argument '%s' (the streams are --train and "
		    "--test)", argv[optind]);
	if (opt.train == NULL || opt.test == NULL)
		d2v_usage("give the labelled streams with --train and --test");
	if (!strcmp(opt.train, "-") + !strcmp(opt.test, "-") +
	    (opt.masked && !strcmp(opt.masked, "-")) > 1)
		d2v_usage("standard input can feed one stream only");
	if (opt.ckpt == NULL && (opt.random || opt.masked || opt.weights_given ||
	    opt.layer != -1 || opt.cls))
		d2v_usage("--baseline random, --masked, --student, --teacher, "
		    "--layer and --pool need a checkpoint (-c)");
	if (opt.json && opt.output && !strcmp(opt.json, "-") &&
	    !strcmp(opt.output, "-"))
		d2v_usage("--json - and -o - both want standard output");
	if (opt.ckpt == NULL && !opt.input)
		d2v_usage("give a checkpoint with -c, or --baseline input");
}

/* The stream's settings, checked against the model (or the first stream
 * when there is none). */
static void
check_header(const char *name, const json_t *hdr)
{
	json_t *tok = d2v_header_meta(hdr, "tokenize");
	long size = (long)json_integer_value(json_object_get(tok, "size"));
	long ch = (long)json_integer_value(json_object_get(tok, "channels"));
	const char *mod = d2v_header_modality(hdr);

	if (mod == NULL || (strcmp(mod, "image") && strcmp(mod, "audio") &&
	    strcmp(mod, "text")))
		d2v_fatal(1, "%s: a stream of modality %s; d2v-eval evaluates "
		    "image, audio and text models", name, mod ? mod : "(none)");
	if (modality[0] == 0) {
		snprintf(modality, sizeof modality, "%s", mod);
		unit = !strcmp(mod, "image") ? "images" : !strcmp(mod, "audio") ?
		    "clips" : "texts";
	} else if (strcmp(mod, modality) != 0) {
		d2v_fatal(1, "%s: a%s %s stream; the other stream is %s", name,
		    strchr("aeiou", mod[0]) ? "n" : "", mod, modality);
	}
	if (have_model)
		d2v_check_stream_model(hdr, &m.cfg, name);
	if (strcmp(mod, "text") == 0) {
		long v = (long)json_integer_value(json_object_get(tok, "vocab_size"));

		if (opt.input && v < 1)
			d2v_fatal(1, "%s: --baseline input needs the vocabulary size "
			    "in the header (meta.tokenize.vocab_size)", name);
		if (vocab == 0) {
			vocab = (int)v;
			if (opt.input) /* bag of tokens */
				rows[nrows++] = (row){.name = "input", .dim = vocab};
		} else if (v != vocab) {
			d2v_fatal(1, "%s: a vocabulary of %ld; the other stream has "
			    "%d", name, v, vocab);
		}
		return;
	}
	if (strcmp(mod, "audio") == 0) {
		if (!audio_seen && opt.input) /* mean log spectrum */
			rows[nrows++] = (row){.name = "input", .dim = SPEC_BINS};
		audio_seen = 1;
		return;
	}
	if (tok == NULL || size <= 0 || ch < 0)
		d2v_fatal(1, "%s: no tokenize stage with the image size and "
		    "channels in the header (make streams with d2v-tokenize)",
		    name);
	if (have_model && ch != 0 && ch != m.cfg.channels)
		d2v_fatal(1, "%s: images of size %ld with %ld channels; the "
		    "checkpoint's model takes size %d with %d", name, size, ch,
		    m.cfg.image_size, m.cfg.channels);
	if (S == 0) {
		json_t *v;
		size_t i;

		S = (int)size;
		/* 0: as decoded (JPEGs without --channels); the model's, or the
		 * first record's (read_stream) */
		C = ch == 0 && have_model ? m.cfg.channels : (int)ch;
		if (C > 3)
			d2v_fatal(1, "%s: %d channels; images have 1 to 3", name, C);
		for (int c = 0; c < 3; c++) {
			mean_[c] = have_model ? m.cfg.mean[c] : 0;
			std_[c] = have_model ? m.cfg.std[c] : 1;
		}
		if (!have_model) {
			json_array_foreach(json_object_get(tok, "mean"), i, v)
				if (i < 3)
					mean_[i] = json_number_value(v);
			json_array_foreach(json_object_get(tok, "std"), i, v)
				if (i < 3 && json_number_value(v) > 0)
					std_[i] = json_number_value(v);
		}
		if (opt.input) /* its width is known once C is */
			rows[nrows++] = (row){.name = "input", .dim = C * S * S};
	} else if (size != S || (ch != 0 && ch != C)) {
		d2v_fatal(1, "%s: images of size %ld with %ld channels; the other "
		    "stream has size %d with %d", name, size, ch, S, C);
	}
}

/* Pools block output f (N+E,D) into out (D): the mean over the N patches,
 * frames or tokens, or the CLS (E = 1). */
static void
pool(float *out, const float *f, int N, int E, int D)
{
	for (int d = 0; d < D; d++) {
		double s = 0;

		if (opt.cls) {
			out[d] = f[d];
			continue;
		}
		for (int n = E; n < N + E; n++)
			s += f[(size_t)n * D + d];
		out[d] = (float)(s / N);
	}
}

/*
 * The raw-input baseline of one audio clip x (L samples): the mean over
 * 25 ms frames (400 samples, hop 320: the feature encoder's receptive field
 * and stride) of the log power spectrum under a Hann window, SPEC_BINS
 * bins from 0 to 8 kHz.
 */
static void
audio_input_features(float *out, const float *x, int L)
{
	static double cosv[400], sinv[400], win[400];
	static int ready;
	int frames = 0;

	if (!ready) {
		for (int i = 0; i < 400; i++) {
			cosv[i] = cos(2 * M_PI * i / 400.0);
			sinv[i] = sin(2 * M_PI * i / 400.0);
			win[i] = 0.5 - 0.5 * cos(2 * M_PI * i / 400.0);
		}
		ready = 1;
	}
	for (int k = 0; k < SPEC_BINS; k++)
		out[k] = 0;
	for (int t = 0; t + 400 <= L; t += 320, frames++) {
		for (int k = 0; k < SPEC_BINS; k++) {
			double re = 0, im = 0;

			for (int i = 0; i < 400; i++) {
				double v = x[t + i] * win[i];
				int a = (int)(((long)k * i) % 400);

				re += v * cosv[a];
				im -= v * sinv[a];
			}
			out[k] += (float)log(re * re + im * im + 1e-6);
		}
	}
	for (int k = 0; k < SPEC_BINS; k++)
		out[k] /= frames > 0 ? frames : 1;
}

/* The features of nb samples x (each of length L) for every row,
 * appended at rows n.. of each row's matrix (test stream when test is
 * set). */
static void
embed_batch(const void *x, int nb, int L, long n, int test, float *blk)
{
	d2v_err err;

	for (int r = 0; r < nrows; r++) {
		row *rw = &rows[r];
		float *X = (test ? rw->te : rw->tr) + (size_t)n * rw->dim;

		if (rw->params == NULL && strcmp(modality, "image") == 0) {
			const uint8_t *img = x;
			size_t npix = (size_t)C * S * S;

			for (int i = 0; i < nb; i++)
				for (size_t j = 0; j < npix; j++) {
					int ch = (int)(j / ((size_t)S * S));

					X[(size_t)i * npix + j] = (float)(
					    (img[(size_t)i * npix + j] / 255.0 - mean_[ch]) /
					    std_[ch]);
				}
			continue;
		}
		if (rw->params == NULL && strcmp(modality, "audio") == 0) {
#pragma omp parallel for schedule(dynamic)
			for (int i = 0; i < nb; i++)
				audio_input_features(X + (size_t)i * SPEC_BINS,
				    (const float *)x + (size_t)i * L, L);
			continue;
		}
		if (rw->params == NULL) {
			/* token frequencies */
			for (int i = 0; i < nb; i++) {
				float *h = X + (size_t)i * vocab;
				const int32_t *ids = (const int32_t *)x + (size_t)i * L;

				memset(h, 0, (size_t)vocab * sizeof *h);
				for (int t = 0; t < L; t++)
					if (ids[t] >= 0 && ids[t] < vocab)
						h[ids[t]] += 1.0f / L;
			}
			continue;
		}
		if (d2v_model_set_length(&m, L, &err) < 0 ||
		    d2v_model_features(&m, rw->params, x, nb, opt.layer, blk,
		    &err) < 0)
			d2v_fatal(1, "%s", err.msg);
		for (int i = 0; i < nb; i++)
			pool(X + (size_t)i * rw->dim,
			    blk + (size_t)i * (m.N + m.E) * m.D, m.N, m.E, m.D);
	}
}

/* The length of record rec's x (1 for images), checked: against the model
 * when there is one. */
static int
input_len(const d2v_record *rec, const char *name)
{
	d2v_tensor *x = d2v_record_tensor(rec, "x");

	if (have_model)
		return d2v_check_input(rec, &m.cfg, name);
	if (strcmp(modality, "image") == 0) {
		if (x == NULL || x->dtype != D2V_DTYPE_U8 || x->rank != 3 ||
		    x->shape[0] != C || x->shape[1] != S || x->shape[2] != S)
			d2v_fatal(1, "%s: record %lld (%s): x must be u8 "
			    "[%d,%d,%d]%s", name, (long long)rec->index,
			    d2v_cli_id(rec),
			    C, S, S, d2v_channels_hint(x, C));
		return 1;
	}
	if (x == NULL || x->rank != 1 || x->shape[0] < 1 || x->shape[0] > INT_MAX / 8 ||
	    x->dtype != (strcmp(modality, "audio") == 0 ? D2V_DTYPE_F32 :
	    D2V_DTYPE_I32))
		d2v_fatal(1, "%s: record %lld (%s): x must be %s", name,
		    (long long)rec->index, d2v_cli_id(rec),
		    strcmp(modality, "audio") == 0 ? "f32 [samples]" :
		    "i32 [tokens]");
	return (int)x->shape[0];
}

/* Reads a labelled stream into every row's features and its labels.
 * Records go through the model in batches of one length: a record of
 * another length ends the batch before it. */
static void
read_stream(const char *path, int test)
{
	const char *name = strcmp(path, "-") ? path : "stdin";
	long n = 0, cap = 0;
	int fd = d2v_open_in(path), rc, nb = 0, pending = 0, blen = 0;
	int **labels = test ? &yte : &ytr;
	d2v_reader *r;
	d2v_record rec;
	d2v_err err;
	char *xs = NULL;
	float *blk = NULL;
	size_t xcap = 0, bcap = 0;
	long limit = test ? opt.limit_test : opt.limit_train;
	double t0 = d2v_now(), tshow = 0;

	if (d2v_reader_open_fd(&r, fd, name, &err) < 0 ||
	    d2v_reader_begin(r, &err) < 0) {
		if (err.code == D2V_EEMPTY)
			d2v_fatal(1, "%s: empty input, no stream", name);
		d2v_fatal(1, "%s", err.msg);
	}
	check_header(name, d2v_reader_header(r));
	d2v_record_init(&rec);
	if (strcmp(modality, "image") == 0 && C == 0) {
		/* channels left to the images: the first record's */
		C = d2v_first_channels(r, &rec, name);
		for (int i = 0; i < nrows; i++)
			if (rows[i].params == NULL)
				rows[i].dim = C * S * S;
		pending = 1;
	}
	for (;;) {
		int len = 0, flush;

		rc = pending ? 1 : limit > 0 && n + nb >= limit ? 0 :
		    d2v_reader_next(r, &rec, &err);
		pending = 0;
		if (rc < 0)
			d2v_fatal(1, "%s", err.msg);
		if (rc > 0)
			len = input_len(&rec, name);
		/* run the batch before this record: full, or of another length */
		flush = nb > 0 && (rc == 0 || len != blen || nb == opt.batch);
		if (flush) {
			embed_batch(xs, nb, blen, n, test, blk);
			n += nb;
			nb = 0;
			if (progress && d2v_now() - tshow > 0.5) {
				tshow = d2v_now();
				fprintf(stderr, "\rd2v-eval: %s: %ld %s, %.0f/s", name, n,
				    unit, n / fmax(tshow - t0, 1e-9));
			}
		}
		if (rc == 0)
			break;
		{
			d2v_tensor *x = d2v_record_tensor(&rec, "x");
			int64_t label;

			if (!d2v_record_int(&rec, "label", &label) &&
			    d2v_record_field(&rec, "label") != NULL)
				d2v_fatal(1, "%s: record %lld (%s): its label is not an "
				    "integer class index (a %s)", name,
				    (long long)rec.index, d2v_cli_id(&rec),
				    d2v_record_field(&rec, "label")->kind ==
				    D2V_FIELD_STR ? "string" : "float, a tensor or an "
				    "integer above 2^63-1");
			if (!d2v_record_int(&rec, "label", &label))
				d2v_fatal(1, "%s: record %lld (%s): no label; d2v-eval "
				    "needs labelled streams (d2v-tokenize --idx-labels, "
				    "--label-from dir or --labeled)", name,
				    (long long)rec.index, d2v_cli_id(&rec));
			if (label < 0 || label >= 100000)
				d2v_fatal(1, "%s: record %lld (%s): label %lld is not a "
				    "class index in [0, 100000)", name,
				    (long long)rec.index, d2v_cli_id(&rec),
				    (long long)label);
			if (n + nb >= cap) {
				cap = cap ? 2 * cap : 1024;
				*labels = realloc(*labels, (size_t)cap * sizeof **labels);
				for (int i = 0; i < nrows; i++) {
					float **X = test ? &rows[i].te : &rows[i].tr;

					*X = realloc(*X, (size_t)cap * rows[i].dim *
					    sizeof **X);
					if (*X == NULL)
						d2v_fatal(1, "%s: out of memory for the "
						    "features of %ld %s", name, cap, unit);
				}
				if (*labels == NULL)
					d2v_fatal(1, "out of memory");
			}
			(*labels)[n + nb] = (int)label;
			if ((size_t)(nb + 1) * x->nbytes > xcap) {
				xcap = (size_t)opt.batch * x->nbytes;
				if ((xs = realloc(xs, xcap)) == NULL)
					d2v_fatal(1, "out of memory");
			}
			if (have_model) {
				size_t need;

				if (d2v_model_set_length(&m, len, &err) < 0)
					d2v_fatal(1, "%s: record %lld (%s): %s", name,
					    (long long)rec.index,
					    d2v_cli_id(&rec), err.msg);
				need = (size_t)opt.batch * (m.N + m.E) * m.D;
				if (need > bcap) {
					if ((blk = realloc(blk, need * sizeof *blk)) == NULL)
						d2v_fatal(1, "out of memory");
					bcap = need;
				}
			}
			memcpy(xs + (size_t)nb * x->nbytes, x->data, x->nbytes);
			blen = len;
			nb++;
		}
	}
	if (progress)
		fprintf(stderr, "\rd2v-eval: %s: %ld %s, %.0f/s\n", name, n, unit,
		    n / fmax(d2v_now() - t0, 1e-9));
	if (n == 0)
		d2v_fatal(1, "%s: no records", name);
	if (test)
		nte = n;
	else
		ntr = n;
	d2v_record_clear(&rec);
	d2v_reader_free(r);
	if (fd != 0)
		close(fd);
	free(xs); free(blk);
}

typedef struct masked_result {
	long records;
	double loss, loss_reg, loss_cls;
} masked_result;

/* The pretraining loss of the student against the EMA teacher's targets
 * (no dropout) over a masked stream, in batches of the checkpoint's
 * training batch size: the regression part averaged over the records, the
 * CLS part (a sum over a batch's rows, as d2v-train logs it) per batch of
 * that size. */
/* The --masked stream's header against the checkpoint's model. */
static void
masked_header(const char *name, const json_t *hdr, int full)
{
	json_t *mk = d2v_header_meta(hdr, "mask");
	const char *mod = d2v_header_modality(hdr);
	int M = m.cfg.clone;

	if (full) /* the stream checks, once the probes' streams set them */
		check_header(name, hdr);
	else if (mod == NULL || strcmp(mod, m.cfg.modality) != 0)
		d2v_fatal(1, "%s: a stream of modality %s; the checkpoint's model "
		    "is %s", name, mod ? mod : "(none)", m.cfg.modality);
	if (!d2v_header_has_stage(hdr, "mask"))
		d2v_fatal(1, "%s: --masked needs a masked stream; run d2v-mask "
		    "first", name);
	if (m.E && json_integer_value(json_object_get(mk, "patch")) > 0 &&
	    json_integer_value(json_object_get(mk, "patch")) != m.cfg.patch)
		d2v_fatal(1, "%s: masks of patch %lld; the checkpoint's model has "
		    "patch %d", name, (long long)json_integer_value(
		    json_object_get(mk, "patch")), m.cfg.patch);
	if (json_integer_value(json_object_get(mk, "copies")) > 0 &&
	    json_integer_value(json_object_get(mk, "copies")) != M)
		d2v_fatal(1, "%s: masks of %lld copies; the checkpoint's model "
		    "trains with %d (d2v-mask --copies)", name, (long long)
		    json_integer_value(json_object_get(mk, "copies")), M);
}

/* --masked FILE checked before the probes run, so that a wrong stream
 * fails at once (standard input is checked when it is read) */
static void
masked_precheck(const char *path)
{
	d2v_reader *r;
	d2v_err err;
	int fd;

	if (path == NULL || !strcmp(path, "-"))
		return;
	fd = d2v_open_in(path);
	if (d2v_reader_open_fd(&r, fd, path, &err) < 0 ||
	    d2v_reader_begin(r, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	masked_header(path, d2v_reader_header(r), 0);
	d2v_reader_free(r);
	close(fd);
}

static masked_result
masked_loss(const char *path)
{
	const char *name = strcmp(path, "-") ? path : "stdin";
	int fd = d2v_open_in(path), rc, nb = 0, M = m.cfg.clone, blen = 0;
	int bs = m.cfg.batch > 0 ? m.cfg.batch : 16;
	masked_result res = {0};
	d2v_reader *r;
	d2v_record rec;
	d2v_err err;
	char *xs = NULL;
	uint8_t *mask = NULL;
	int32_t *xm = NULL;   /* (bs, N) v1 text: x_masked */
	size_t xcap = 0, mcap = 0;
	long batches = 0;
	int v1text = d2v_config_is_v1(&m.cfg) && !strcmp(m.cfg.modality, "text");
	int64_t mask_id = -1;
	long skipped = 0;   /* v1 text: records of batches without <mask> */
	double tshow = 0;

	if (d2v_reader_open_fd(&r, fd, name, &err) < 0 ||
	    d2v_reader_begin(r, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	masked_header(name, d2v_reader_header(r), 1);
	if (v1text)
		mask_id = d2v_check_mask_id(d2v_reader_header(r), &m.cfg, name);
	/* evaluation: no dropout in the student */
	m.cfg.encoder_dropout = m.cfg.attention_dropout = 0;
	m.cfg.activation_dropout = m.cfg.post_mlp_drop = m.cfg.drop_path = 0;
	m.cfg.embed_dropout = m.cfg.context_dropout = m.cfg.input_dropout = 0;
	m.cfg.layerdrop = 0;
	d2v_record_init(&rec);
	for (;;) {
		int len = 0;

		rc = opt.limit > 0 && res.records + nb >= opt.limit ? 0 :
		    d2v_reader_next(r, &rec, &err);
		if (rc < 0)
			d2v_fatal(1, "%s", err.msg);
		if (rc > 0)
			len = d2v_check_input(&rec, &m.cfg, name);
		if (nb > 0 && (rc == 0 || len != blen || nb == bs) && v1text &&
		    memchr(mask, 1, (size_t)nb * m.N) == NULL) {
			/* v1 text: no <mask> token in these records, no loss */
			skipped += nb;
			nb = 0;
		}
		if (nb > 0 && (rc == 0 || len != blen || nb == bs)) {
			d2v_step_out o;

			d2v_model_set_student_ids(&m, xm);
			if (d2v_model_set_length(&m, blen, &err) < 0 ||
			    d2v_model_step(&m, xs, mask, NULL, NULL, NULL, nb,
			    (uint64_t)opt.seed * 0x9e3779b97f4a7c15ull + (uint64_t)batches,
			    &o, &err) < 0)
				d2v_fatal(1, "%s: records %ld..%ld: %s", name,
				    res.records, res.records + nb - 1, err.msg);
			res.loss_reg += o.loss_reg * nb;
			res.loss_cls += o.loss_cls;
			res.records += nb;
			batches++;
			nb = 0;
			if (progress && d2v_now() - tshow > 0.5) {
				tshow = d2v_now();
				fprintf(stderr, "\rd2v-eval: %s: %ld %s, loss %.4f",
				    name, res.records, unit, (res.loss_reg +
				    res.loss_cls * bs) / res.records);
			}
		}
		if (rc == 0)
			break;
		{
			d2v_tensor *x = d2v_record_tensor(&rec, "x");
			d2v_tensor *k = d2v_record_tensor(&rec, "mask");
			int N;

			if (d2v_model_set_length(&m, len, &err) < 0)
				d2v_fatal(1, "%s: record %lld (%s): %s", name,
				    (long long)rec.index, d2v_cli_id(&rec),
				    err.msg);
			N = m.N;
			if (k == NULL || k->dtype != D2V_DTYPE_U8 || k->rank != 2 ||
			    k->shape[0] != M || k->shape[1] != N)
				d2v_fatal(1, "%s: record %lld (%s): mask must be u8 "
				    "[%d,%d] (the checkpoint's copies and tokens)", name,
				    (long long)rec.index, d2v_cli_id(&rec), M,
				    N);
			if ((size_t)bs * x->nbytes > xcap) {
				xcap = (size_t)bs * x->nbytes;
				if ((xs = realloc(xs, xcap)) == NULL)
					d2v_fatal(1, "out of memory");
			}
			if ((size_t)bs * k->nbytes > mcap) {
				mcap = (size_t)bs * k->nbytes;
				if ((mask = realloc(mask, mcap)) == NULL)
					d2v_fatal(1, "out of memory");
			}
			memcpy(xs + (size_t)nb * x->nbytes, x->data, x->nbytes);
			memcpy(mask + (size_t)nb * k->nbytes, k->data, k->nbytes);
			if (v1text) {
				/* the student reads x_masked; the loss where it is
				 * <mask> */
				const int32_t *ids = d2v_check_x_masked(&rec, &m.cfg,
				    name, N);
				int32_t *dst;

				if ((xm = realloc(xm, (size_t)bs * N * sizeof *xm)) == NULL)
					d2v_fatal(1, "out of memory");
				dst = xm + (size_t)nb * N;
				for (int n = 0; n < N; n++) {
					dst[n] = ids[n];
					mask[(size_t)nb * N + n] = dst[n] == mask_id;
				}
			}
			blen = len;
			nb++;
		}
	}
	if (progress)
		fputc('\n', stderr);
	if (res.records == 0)
		d2v_fatal(1, "%s: no records%s", name, skipped ? " with a <mask> "
		    "token" : "");
	res.loss_reg /= res.records;
	res.loss_cls *= (double)bs / res.records;
	res.loss = res.loss_reg + res.loss_cls;
	d2v_record_clear(&rec);
	d2v_reader_free(r);
	if (fd != 0)
		close(fd);
	free(xs); free(mask); free(xm);
	return res;
}

static void
evaluate(row *rw, int k)
{
	d2v_probe_opts po;
	d2v_err err;
	double t0 = d2v_now();

	d2v_probe_opts_default(&po);
	po.l2 = opt.l2;
	po.holdout = opt.holdout;
	po.seed = (uint64_t)opt.seed;
	po.lbfgs.max_iter = (int)opt.max_iter;
	po.lbfgs.gtol = opt.tol;
	if (progress)
		fprintf(stderr, "d2v-eval: %s: linear probe on %ld x %d\n",
		    rw->name, ntr, rw->dim);
	if (d2v_probe_linear(rw->tr, ytr, ntr, rw->te, yte, nte, rw->dim, k, &po,
	    &rw->lin, &err) < 0)
		d2v_fatal(1, "%s: linear probe: %s", rw->name, err.msg);
	if (!rw->lin.fit.converged && !opt.quiet)
		d2v_warn("%s: the linear probe stopped after %d iterations "
		    "without converging (max |gradient| %.2g); raise --max-iter",
		    rw->name, rw->lin.fit.iters, rw->lin.fit.gmax);
	if (progress)
		fprintf(stderr, "d2v-eval: %s: %d-NN\n", rw->name, opt.knn);
	if (d2v_probe_knn(rw->tr, ytr, ntr, rw->te, yte, nte, rw->dim, k,
	    opt.knn, opt.temperature, NULL, &rw->knn, &err) < 0)
		d2v_fatal(1, "%s: k-NN: %s", rw->name, err.msg);
	rw->std = d2v_features_std(rw->te, nte, rw->dim);
	if (nte < 2)
		rw->erank = NAN;
	else if (d2v_features_effective_rank(rw->te, nte, rw->dim, &rw->erank,
	    &err) < 0)
		d2v_fatal(1, "%s: effective rank: %s", rw->name, err.msg);
	rw->secs = d2v_now() - t0;
}

static json_t *
jnum(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
}

static json_t *
report_json(int k, long step, const masked_result *mr, double secs)
{
	json_t *j = json_object(), *arr = json_array();

	if (have_model) {
		json_object_set_new(j, "checkpoint", json_string(opt.ckpt));
		json_object_set_new(j, "step", json_integer(step));
		json_object_set_new(j, "weights", json_string(opt.student ?
		    "student" : "teacher"));
		json_object_set_new(j, "layer", json_integer(opt.layer < 0 ?
		    m.nb + opt.layer : opt.layer));
		json_object_set_new(j, "blocks", json_integer(m.nb));
		json_object_set_new(j, "pool", json_string(opt.cls ? "cls" :
		    "mean"));
	}
	json_object_set_new(j, "train", json_pack("{s:s,s:I}", "file",
	    opt.train, "records", (json_int_t)ntr));
	json_object_set_new(j, "test", json_pack("{s:s,s:I}", "file", opt.test,
	    "records", (json_int_t)nte));
	json_object_set_new(j, "classes", json_integer(k));
	for (int r = 0; r < nrows; r++) {
		const row *rw = &rows[r];
		json_t *grid = json_array();

		for (int g = 0; g < rw->lin.ngrid; g++)
			json_array_append_new(grid, json_pack("{s:o,s:o,s:i}", "l2",
			    jnum(rw->lin.grid_l2[g]), "holdout_accuracy",
			    jnum(rw->lin.grid_acc[g]), "iterations",
			    rw->lin.grid_iters[g]));
		json_array_append_new(arr, json_pack(
		    "{s:s,s:i,s:{s:o,s:o,s:o,s:o,s:I,s:I,s:i,s:b},"
		    "s:{s:o,s:i,s:o},s:o,s:o,s:o}",
		    "features", rw->name, "dim", rw->dim,
		    "linear", "accuracy", jnum(rw->lin.accuracy), "train_accuracy",
		    jnum(rw->lin.train_accuracy), "l2", jnum(rw->lin.l2), "grid",
		    grid, "fit_rows", (json_int_t)rw->lin.n_fit, "holdout_rows",
		    (json_int_t)rw->lin.n_holdout, "iterations", rw->lin.fit.iters,
		    "converged", rw->lin.fit.converged,
		    "knn", "accuracy", jnum(rw->knn), "k", opt.knn, "temperature",
		    jnum(opt.temperature),
		    "std", jnum(rw->std), "effective_rank", jnum(rw->erank),
		    "seconds", jnum(rw->secs)));
	}
	json_object_set_new(j, "rows", arr);
	if (mr != NULL)
		json_object_set_new(j, "masked", json_pack("{s:s,s:I,s:o,s:o,s:o}",
		    "file", opt.masked, "records", (json_int_t)mr->records, "loss",
		    jnum(mr->loss), "loss_reg", jnum(mr->loss_reg), "loss_cls",
		    jnum(mr->loss_cls)));
	json_object_set_new(j, "seconds", jnum(secs));
	return j;
}

static void
report_table(FILE *f, int k, long step, const masked_result *mr)
{
	if (have_model)
		fprintf(f, "checkpoint %s, step %ld: %s weights, block %d of %d, "
		    "%s pooling\n", opt.ckpt, step, opt.student ? "student" :
		    "teacher", (opt.layer < 0 ? m.nb + opt.layer : opt.layer) + 1,
		    m.nb, opt.cls ? "CLS" : "mean");
	fprintf(f, "train %ld %s (%s), test %ld %s (%s), %d classes\n\n",
	    ntr, unit, opt.train, nte, unit, opt.test, k);
	fprintf(f, "%-12s %6s  %8s %8s  %8s  %8s %8s\n", "features", "dim",
	    "linear", "l2", "knn", "std", "erank");
	for (int r = 0; r < nrows; r++) {
		const row *rw = &rows[r];

		fprintf(f, "%-12s %6d  %8.4f %8.0e  %8.4f  %8.4f %8.2f\n", rw->name,
		    rw->dim, rw->lin.accuracy, rw->lin.l2, rw->knn, rw->std,
		    rw->erank);
	}
	fprintf(f, "\nlinear: logistic regression on standardised features, ");
	if (rows[0].lin.n_holdout > 0)
		fprintf(f, "l2 chosen on %ld held-out training %s",
		    rows[0].lin.n_holdout, unit);
	else
		fprintf(f, "l2 %s", opt.l2 > 0 ? "given" : "not selected (too "
		    "few training records)");
	fprintf(f, "; knn: %d nearest by cosine, votes exp(s/%g); std, erank: "
	    "on the test features\n", opt.knn, opt.temperature);
	if (mr != NULL)
		fprintf(f, "held-out pretraining loss %.6f (regression %.6f, CLS "
		    "%.6f) on %ld masked %s of %s\n", mr->loss, mr->loss_reg,
		    mr->loss_cls, mr->records, unit, opt.masked);
}

int
main(int argc, char **argv)
{
	float *rnd = NULL;
	long step = 0;
	int k = 0;
	masked_result mr, *mrp = NULL;
	double t0 = d2v_now();
	d2v_err err;

	d2v_cli_init("d2v-eval", 0);
	parse_args(argc, argv);
	progress = d2v_progress_enabled(opt.quiet ? 0 : opt.progress);
	if (opt.ckpt != NULL) {
		if (d2v_checkpoint_load(opt.ckpt, &m, d2v_backend_cpu(), &step,
		    NULL, &err) < 0)
			d2v_fatal(1, "%s", err.msg);
		if (m.unverified)
			d2v_warn("%s has no data digest (data_sha256; written by "
			    "another tool?): its data cannot be checked", opt.ckpt);
		have_model = 1;
		masked_precheck(opt.masked);
		if (opt.layer >= m.nb)
			d2v_usage("--layer %d: the model has %d blocks (0..%d)",
			    opt.layer, m.nb, m.nb - 1);
		if (opt.cls && !m.E)
			d2v_usage("--pool cls: the %s model has no CLS token (use "
			    "mean)", m.cfg.modality);
		rows[nrows++] = (row){.name = "pretrained", .dim = m.D,
		    .params = opt.student ? m.params : m.teacher};
		if (opt.random) {
			rnd = malloc(m.lay.total * sizeof *rnd);
			if (rnd == NULL)
				d2v_fatal(1, "out of memory");
			/* keyed apart from the seeds training runs use, so the
			 * random encoder is not the checkpoint's starting point */
			d2v_params_init(&m.lay, &m.cfg, rnd, (uint64_t)opt.seed *
			    0x9e3779b97f4a7c15ull + 0x5eed);
			rows[nrows++] = (row){.name = "random", .dim = m.D,
			    .params = rnd};
		}
	}
	read_stream(opt.train, 0);
	read_stream(opt.test, 1);
	if (ntr < 2)
		d2v_fatal(1, "%s: 1 record; the probes need 2 or more", opt.train);
	for (long i = 0; i < ntr; i++)
		k = ytr[i] + 1 > k ? ytr[i] + 1 : k;
	for (long i = 0; i < nte; i++)
		k = yte[i] + 1 > k ? yte[i] + 1 : k;
	if (k < 2)
		d2v_fatal(1, "%s: every label is %d; the probes need 2 classes or "
		    "more", opt.train, ytr[0]);
	for (int r = 0; r < nrows; r++)
		evaluate(&rows[r], k);
	if (opt.masked) {
		mr = masked_loss(opt.masked);
		mrp = &mr;
	}
	{
		json_t *j = report_json(k, step, mrp, d2v_now() - t0);
		int json_stdout = opt.json && !strcmp(opt.json, "-");
		d2v_out out;

		if (opt.json) {
			d2v_out_open(&out, opt.json, 0);
			if (json_dumpf(j, d2v_out_file(&out), JSON_INDENT(2) |
			    JSON_REAL_PRECISION(8)) < 0 ||
			    fputc('\n', d2v_out_file(&out)) == EOF)
				d2v_fatal(1, "%s: write failed", out.name);
			d2v_out_commit(&out);
		}
		if (!json_stdout || opt.output) {
			d2v_out_open(&out, opt.output, 0);
			report_table(d2v_out_file(&out), k, step, mrp);
			d2v_out_commit(&out);
		}
		json_decref(j);
	}
	for (int r = 0; r < nrows; r++) {
		free(rows[r].tr);
		free(rows[r].te);
	}
	free(ytr); free(yte); free(rnd);
	if (have_model)
		d2v_model_free(&m);
	return 0;
}
