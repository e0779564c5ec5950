/*
 * d2v-mask - add M masked copies' masks to every record of a stream.
 *
 * Usage: d2v-mask [--strategy NAME] [--copies M] [--seed S] [PARAMETERS]
 *                 [--replace] [-o FILE] [FILE]
 *
 * Reads a tokenized stream, writes it again with `mask` u8 [M, N] (and, for
 * bert, `x_masked` i32 [M, N]) in every record and meta.mask in the header.
 * Row m of record i depends only on (seed, key(i), m): see --offset, --key.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "mask.h"
#include "model/params.h"
#include "rng.h"
#include "stream.h"

static const char usage_text[] =
"Usage: d2v-mask [OPTION]... [FILE]\n"
"Add masks to every record of a d2v stream: `mask' u8 [M, N], 1 = masked,\n"
"M copies of N tokens, with the masking strategies of data2vec (v1) and\n"
"data2vec 2.0 (v2) and the reference's numbers.  With no FILE, or when\n"
"FILE is -, read standard input.\n"
"\n"
"  -s, --strategy NAME  inverse-block (v2 image), block (v1 image, BEiT),\n"
"                       block1d (v2 audio), span (v1 audio), random (v2 text),\n"
"                       bert (v1 text); default by modality: inverse-block,\n"
"                       block1d, random\n"
"  -m, --copies M       masked copies per record (default 16 inverse-block,\n"
"                       8 block1d and random, 1 block, span and bert)\n"
"      --seed S         seed (default 1); masks depend on (seed, record, copy)\n"
"      --offset K       key record i as i + K (to mask the parts of a split\n"
"                       stream: K = records before the part; default 0)\n"
"      --key index|id   key records by position (default) or by a hash of id\n"
"      --patch P        image patch size (default 16): N = (size / P)^2\n"
"      --large          the large-model values (inverse-block R 0.75 A 0.10,\n"
"                       block1d R 0.55 A 0.1 and 12 copies, random R 0.5)\n"
"Strategy parameters (the reference's base-model defaults):\n"
"      --prob R         mask probability/ratio in (0, 1): inverse-block 0.8,\n"
"                       block1d 0.5, span 0.65, random 0.48, bert 0.15\n"
"      --adjust A       inverse-block 0.07, block1d 0.05: extra centres\n"
"      --length L       block width (inverse-block 3), span length (block1d\n"
"                       5, span 10), bert span (1); --span is the same\n"
"      --inverse, --no-inverse  blocks mark kept tokens (inverse-block: on,\n"
"                       block1d: off)\n"
"      --min-masks K    span: at least K spans per copy (1)\n"
"      --count K        block: patches to mask (120 of 196; round(N 120/196))\n"
"      --min-patches K  block: smallest rectangle area drawn (16)\n"
"      --max-patches K  block: largest rectangle (N)\n"
"      --min-aspect A   block: aspect ratio range A .. --max-aspect (0.3,\n"
"      --max-aspect A   1/0.3)\n"
"      --leave-unmasked P  bert: selected tokens left as they are (0.1)\n"
"      --random-token P    bert: selected tokens set to a random id (0.1);\n"
"                       both default to 0 when --span is above 1 (the\n"
"                       released config: --span 4 --prob 0.35)\n"
"Other:\n"
"      --replace        mask a stream that is already masked again\n"
"      --progress, --no-progress  a progress line on standard error\n"
"                       (default: when it is a terminal)\n"
"  -o, --output FILE    write to FILE instead of standard output\n"
"  -q, --quiet          no warnings\n"
"  -h, --help           show this help and exit\n"
"      --version        show the version and exit\n"
"\n"
"Exit status: 0 ok, 1 bad input or write error, 2 usage error.\n";

enum {
	OPT_SEED = 256, OPT_OFFSET, OPT_KEY, OPT_PATCH, OPT_LARGE, OPT_PROB,
	OPT_ADJUST, OPT_LENGTH, OPT_INVERSE, OPT_NO_INVERSE, OPT_MIN_MASKS,
	OPT_COUNT, OPT_MIN_PATCHES, OPT_MAX_PATCHES, OPT_MIN_ASPECT,
	OPT_MAX_ASPECT, OPT_LEAVE, OPT_RANDOM_TOKEN, OPT_REPLACE, OPT_PROGRESS,
	OPT_NO_PROGRESS, OPT_VERSION,
};

static const struct option longopts[] = {
	{"strategy", required_argument, NULL, 's'},
	{"copies", required_argument, NULL, 'm'},
	{"seed", required_argument, NULL, OPT_SEED},
	{"offset", required_argument, NULL, OPT_OFFSET},
	{"key", required_argument, NULL, OPT_KEY},
	{"patch", required_argument, NULL, OPT_PATCH},
	{"large", no_argument, NULL, OPT_LARGE},
	{"prob", required_argument, NULL, OPT_PROB},
	{"adjust", required_argument, NULL, OPT_ADJUST},
	{"length", required_argument, NULL, OPT_LENGTH},
	{"span", required_argument, NULL, OPT_LENGTH},
	{"inverse", no_argument, NULL, OPT_INVERSE},
	{"no-inverse", no_argument, NULL, OPT_NO_INVERSE},
	{"min-masks", required_argument, NULL, OPT_MIN_MASKS},
	{"count", required_argument, NULL, OPT_COUNT},
	{"min-patches", required_argument, NULL, OPT_MIN_PATCHES},
	{"max-patches", required_argument, NULL, OPT_MAX_PATCHES},
	{"min-aspect", required_argument, NULL, OPT_MIN_ASPECT},
	{"max-aspect", required_argument, NULL, OPT_MAX_ASPECT},
	{"leave-unmasked", required_argument, NULL, OPT_LEAVE},
	{"random-token", required_argument, NULL, OPT_RANDOM_TOKEN},
	{"replace", no_argument, NULL, OPT_REPLACE},
	{"progress", no_argument, NULL, OPT_PROGRESS},
	{"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
	{"output", required_argument, NULL, 'o'},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, OPT_VERSION},
	{NULL, 0, NULL, 0},
};

/* The strategy parameters a user can set; a bit each, so that a parameter
 * the chosen strategy does not read is a usage error, not a silent no-op. */
enum {
	P_PROB = 1 << 0, P_ADJUST = 1 << 1, P_LENGTH = 1 << 2,
	P_INVERSE = 1 << 3, P_MIN_MASKS = 1 << 4, P_COUNT = 1 << 5,
	P_MIN_PATCHES = 1 << 6, P_MAX_PATCHES = 1 << 7, P_MIN_ASPECT = 1 << 8,
	P_MAX_ASPECT = 1 << 9, P_LEAVE = 1 << 10, P_RANDOM_TOKEN = 1 << 11,
};

static const char *const param_opt[] = {
	"--prob", "--adjust", "--length", "--inverse", "--min-masks",
	"--count", "--min-patches", "--max-patches", "--min-aspect",
	"--max-aspect", "--leave-unmasked", "--random-token",
};

static const unsigned strategy_params[D2V_MASK_COUNT] = {
	[D2V_MASK_INVERSE_BLOCK] = P_PROB | P_ADJUST | P_LENGTH | P_INVERSE,
	[D2V_MASK_BLOCK] = P_COUNT | P_MIN_PATCHES | P_MAX_PATCHES |
	    P_MIN_ASPECT | P_MAX_ASPECT,
	[D2V_MASK_BLOCK1D] = P_PROB | P_ADJUST | P_LENGTH | P_INVERSE,
	[D2V_MASK_SPAN] = P_PROB | P_LENGTH | P_MIN_MASKS,
	[D2V_MASK_RANDOM] = P_PROB,
	[D2V_MASK_BERT] = P_PROB | P_LENGTH | P_LEAVE | P_RANDOM_TOKEN,
};

static struct {
	const char *strategy;   /* NULL: by modality */
	long copies;            /* 0: by strategy */
	unsigned long long seed;
	long long offset;
	int key_id;             /* --key id */
	long patch;
	int large, replace, quiet, progress;
	const char *output;
	unsigned set;           /* P_* given on the command line */
	d2v_mask_config user;   /* their values */
} opt = {.seed = 1, .patch = 16, .progress = -1};

typedef enum { MOD_IMAGE, MOD_AUDIO, MOD_TEXT } modality;

/* What every record needs, settled from the header and the options. */
typedef struct job {
	modality mod;
	d2v_mask_config cfg;
	int copies;
	int64_t size;           /* image: meta.tokenize.size, 0 when absent */
	d2v_mask_vocab vocab;   /* bert */
	d2v_rng *rng;           /* (copies) */
} job;

static double
parse_prob(const char *name, const char *s, int open_low)
{
	/* any number first, so that every value out of range gets the
	 * interval it must lie in */
	double v = d2v_parse_double(name, s, -1e300, 1e300);

	if ((open_low && v <= 0.0) || v < 0.0 || v >= 1.0)
		d2v_usage("%s: '%s' is not in %s0, 1)", name, s,
		    open_low ? "(" : "[");
	return v;
}

static void
parse_args(int argc, char **argv)
{
	int c;

	while ((c = getopt_long(argc, argv, "s:m:o:qh", longopts, NULL)) != -1) {
		switch (c) {
		case 's': {
			d2v_mask_strategy s;

			if (d2v_mask_strategy_parse(optarg, &s) < 0)
				d2v_usage("--strategy: unknown strategy '%s' (one "
				    "of inverse-block, block, block1d, span, "
				    "random, bert)", optarg);
			opt.strategy = optarg;
			break;
		}
		case 'm':
			opt.copies = d2v_parse_long("--copies", optarg, 1, 4096);
			break;
		case OPT_SEED: {
			char *end;

			errno = 0;
			opt.seed = strtoull(optarg, &end, 10);
			if (*optarg < '0' || *optarg > '9' || *end != '\0' ||
			    errno != 0 || opt.seed > INT64_MAX)
				d2v_usage("--seed: '%s' is not an integer in "
				    "[0, 2^63)", optarg);
			break;
		}
		case OPT_OFFSET:
			opt.offset = d2v_parse_long("--offset", optarg, 0,
			    LONG_MAX);
			break;
		case OPT_KEY:
			if (strcmp(optarg, "index") == 0)
				opt.key_id = 0;
			else if (strcmp(optarg, "id") == 0)
				opt.key_id = 1;
			else
				d2v_usage("--key: '%s' is neither index nor id",
				    optarg);
			break;
		case OPT_PATCH:
			opt.patch = d2v_parse_long("--patch", optarg, 1, 65536);
			break;
		case OPT_LARGE: opt.large = 1; break;
		case OPT_PROB:
			opt.user.prob = parse_prob("--prob", optarg, 1);
			opt.set |= P_PROB;
			break;
		case OPT_ADJUST:
			opt.user.adjust = parse_prob("--adjust", optarg, 0);
			opt.set |= P_ADJUST;
			break;
		case OPT_LENGTH:
			opt.user.length = (int)d2v_parse_long("--length", optarg,
			    1, 1 << 20);
			opt.set |= P_LENGTH;
			break;
		case OPT_INVERSE:
		case OPT_NO_INVERSE:
			opt.user.inverse = c == OPT_INVERSE;
			opt.set |= P_INVERSE;
			break;
		case OPT_MIN_MASKS:
			opt.user.min_masks = (int)d2v_parse_long("--min-masks",
			    optarg, 1, 1 << 20);
			opt.set |= P_MIN_MASKS;
			break;
		case OPT_COUNT:
			opt.user.count = (int)d2v_parse_long("--count", optarg, 1,
			    1 << 30);
			opt.set |= P_COUNT;
			break;
		case OPT_MIN_PATCHES:
			opt.user.min_patches = (int)d2v_parse_long(
			    "--min-patches", optarg, 1, 1 << 30);
			opt.set |= P_MIN_PATCHES;
			break;
		case OPT_MAX_PATCHES:
			opt.user.max_patches = (int)d2v_parse_long(
			    "--max-patches", optarg, 1, 1 << 30);
			opt.set |= P_MAX_PATCHES;
			break;
		case OPT_MIN_ASPECT:
			opt.user.min_aspect = d2v_parse_double("--min-aspect",
			    optarg, 1e-6, 1e6);
			opt.set |= P_MIN_ASPECT;
			break;
		case OPT_MAX_ASPECT:
			opt.user.max_aspect = d2v_parse_double("--max-aspect",
			    optarg, 1e-6, 1e6);
			opt.set |= P_MAX_ASPECT;
			break;
		case OPT_LEAVE:
			opt.user.leave_unmasked = d2v_parse_double(
			    "--leave-unmasked", optarg, 0.0, 1.0);
			opt.set |= P_LEAVE;
			break;
		case OPT_RANDOM_TOKEN:
			opt.user.random_token = d2v_parse_double(
			    "--random-token", optarg, 0.0, 1.0);
			opt.set |= P_RANDOM_TOKEN;
			break;
		case OPT_REPLACE: opt.replace = 1; break;
		case OPT_PROGRESS: opt.progress = 1; break;
		case OPT_NO_PROGRESS: opt.progress = 0; break;
		case 'o': opt.output = optarg; break;
		case 'q': opt.quiet = 1; break;
		case 'h': fputs(usage_text, stdout); exit(0);
		case OPT_VERSION: d2v_version();
		default: d2v_usage("unknown option");
		}
	}
	if (argc - optind > 1)
		d2v_usage("one input at most (cat the streams: cat a b | "
		    "d2v-mask)");
	if (opt.key_id && opt.offset != 0)
		d2v_usage("--offset keys by position; it has no meaning with "
		    "--key id");
}

/* meta.tokenize.<key> as an integer, looking also in a "special" or
 * "specials" object; -1 when absent or negative. */
static int64_t
tok_int(const json_t *tok, const char *key)
{
	const char *sub[] = {NULL, "special", "specials"};

	for (int i = 0; i < 3; i++) {
		const json_t *o = sub[i] ? json_object_get(tok, sub[i]) : tok;
		json_t *v = json_object_get(o, key);

		if (json_is_integer(v))
			return json_integer_value(v) >= 0 ?
			    json_integer_value(v) : -1;
	}
	return -1;
}

/* Resolves the strategy, its parameters and the shape settings from the
 * header and the options; returns meta.mask.  Exits on a bad combination. */
static json_t *
setup(job *jb, const json_t *hdr)
{
	const char *mname = d2v_header_modality(hdr);
	const json_t *tok = d2v_header_meta(hdr, "tokenize");
	d2v_mask_strategy s;
	d2v_mask_config *c = &jb->cfg;
	json_t *meta;
	d2v_err err;

	if (mname == NULL)
		d2v_fatal(1, "the stream header has no modality");
	if (strcmp(mname, "image") == 0)
		jb->mod = MOD_IMAGE;
	else if (strcmp(mname, "audio") == 0)
		jb->mod = MOD_AUDIO;
	else if (strcmp(mname, "text") == 0)
		jb->mod = MOD_TEXT;
	else
		d2v_fatal(1, "cannot mask a stream of modality %s (image, audio "
		    "or text)", mname);
	if (opt.strategy != NULL)
		d2v_mask_strategy_parse(opt.strategy, &s);
	else
		s = jb->mod == MOD_IMAGE ? D2V_MASK_INVERSE_BLOCK :
		    jb->mod == MOD_AUDIO ? D2V_MASK_BLOCK1D : D2V_MASK_RANDOM;
	if (d2v_mask_strategy_is_2d(s) && jb->mod != MOD_IMAGE)
		d2v_fatal(1, "--strategy %s masks image patches; this is a%s "
		    "%s stream", d2v_mask_strategy_name(s),
		    jb->mod == MOD_AUDIO ? "n" : "", mname);
	if ((s == D2V_MASK_BLOCK1D || s == D2V_MASK_SPAN) &&
	    jb->mod == MOD_IMAGE)
		d2v_fatal(1, "--strategy %s masks sequences; for images use "
		    "inverse-block, block or random", d2v_mask_strategy_name(s));
	if (s == D2V_MASK_BERT && jb->mod != MOD_TEXT)
		d2v_fatal(1, "--strategy bert masks text ids; this is an %s "
		    "stream", mname);
	for (unsigned b = 0; b < sizeof param_opt / sizeof *param_opt; b++)
		if ((opt.set & (1u << b)) && !(strategy_params[s] & (1u << b)))
			d2v_usage("%s has no meaning for --strategy %s",
			    param_opt[b], d2v_mask_strategy_name(s));

	d2v_mask_config_default(c, s);
	if (opt.large)
		d2v_mask_config_large(c);
	if (opt.set & P_PROB) c->prob = opt.user.prob;
	if (opt.set & P_ADJUST) c->adjust = opt.user.adjust;
	if (opt.set & P_LENGTH) c->length = opt.user.length;
	if (opt.set & P_INVERSE) c->inverse = opt.user.inverse;
	if (opt.set & P_MIN_MASKS) c->min_masks = opt.user.min_masks;
	if (opt.set & P_COUNT) c->count = opt.user.count;
	if (opt.set & P_MIN_PATCHES) c->min_patches = opt.user.min_patches;
	if (opt.set & P_MAX_PATCHES) c->max_patches = opt.user.max_patches;
	if (opt.set & P_MIN_ASPECT) c->min_aspect = opt.user.min_aspect;
	if (opt.set & P_MAX_ASPECT) c->max_aspect = opt.user.max_aspect;
	if (s == D2V_MASK_BERT && c->length > 1) {
		/* the span variant of the released config replaces every
		 * selected token with <mask> */
		c->leave_unmasked = 0.0;
		c->random_token = 0.0;
	}
	if (opt.set & P_LEAVE) c->leave_unmasked = opt.user.leave_unmasked;
	if (opt.set & P_RANDOM_TOKEN) c->random_token = opt.user.random_token;
	if (d2v_mask_config_check(c, &err) < 0)
		d2v_usage("%s", err.msg);

	jb->copies = (int)opt.copies;
	if (jb->copies == 0)
		jb->copies = s == D2V_MASK_INVERSE_BLOCK ? 16 :
		    s == D2V_MASK_BLOCK1D ? (opt.large ? 12 : 8) :
		    s == D2V_MASK_RANDOM ? 8 : 1;

	meta = json_object();
	json_object_set_new(meta, "strategy",
	    json_string(d2v_mask_strategy_name(s)));
	json_object_set_new(meta, "copies", json_integer(jb->copies));
	json_object_set_new(meta, "seed", json_integer((json_int_t)opt.seed));
	json_object_set_new(meta, "key",
	    json_string(opt.key_id ? "id" : "index"));
	if (!opt.key_id)
		json_object_set_new(meta, "offset",
		    json_integer((json_int_t)opt.offset));
	if (jb->mod == MOD_IMAGE) {
		jb->size = tok_int(tok, "size");
		json_object_set_new(meta, "patch", json_integer(opt.patch));
		if (jb->size > 0) {
			int64_t g = jb->size / opt.patch;

			if (jb->size % opt.patch != 0)
				d2v_fatal(1, "the image size %lld (meta.tokenize."
				    "size) is not divisible by the patch size "
				    "%ld; choose --patch", (long long)jb->size,
				    opt.patch);
			/* the reference's --min-patches 16 is for 196
			 * patches: on a grid whose count is smaller, no
			 * rectangle would fit, so the default follows it */
			if (s == D2V_MASK_BLOCK && !(opt.set & P_MIN_PATCHES) &&
			    c->min_patches > d2v_mask_block_count(c, g * g))
				c->min_patches = (int)d2v_mask_block_count(c,
				    g * g);
			if (d2v_mask_check_size(c, g, g, &err) < 0)
				d2v_fatal(1, "images of %lld with patch %ld: %s",
				    (long long)jb->size, opt.patch, err.msg);
			json_object_set_new(meta, "grid", json_pack("[I,I]",
			    (json_int_t)g, (json_int_t)g));
			json_object_set_new(meta, "tokens",
			    json_integer((json_int_t)(g * g)));
			if (s == D2V_MASK_BLOCK) {
				c->count = (int)d2v_mask_block_count(c, g * g);
				if (c->max_patches == 0)
					c->max_patches = (int)(g * g);
			}
		}
	} else if (opt.patch != 16) {
		d2v_usage("--patch applies to image streams; this is a%s %s "
		    "stream", jb->mod == MOD_AUDIO ? "n" : "", mname);
	}
	if (jb->mod == MOD_AUDIO) {
		/* N from the conv feature encoder: (kernel, stride) per layer */
		json_t *fr = json_array();

		for (int i = 0; i < D2V_CONV_LAYERS; i++)
			json_array_append_new(fr, json_pack("[i,i]",
			    d2v_conv_kernel[i], d2v_conv_stride[i]));
		json_object_set_new(meta, "frames", fr);
	}
	switch (s) {
	case D2V_MASK_INVERSE_BLOCK:
	case D2V_MASK_BLOCK1D:
		json_object_set_new(meta, "prob", json_real(c->prob));
		json_object_set_new(meta, "adjust", json_real(c->adjust));
		json_object_set_new(meta, "length", json_integer(c->length));
		json_object_set_new(meta, "inverse", json_boolean(c->inverse));
		break;
	case D2V_MASK_BLOCK:
		if (c->count > 0)
			json_object_set_new(meta, "count",
			    json_integer(c->count));
		json_object_set_new(meta, "min_patches",
		    json_integer(c->min_patches));
		if (c->max_patches > 0)
			json_object_set_new(meta, "max_patches",
			    json_integer(c->max_patches));
		json_object_set_new(meta, "min_aspect", json_real(c->min_aspect));
		json_object_set_new(meta, "max_aspect", json_real(
		    c->max_aspect > 0 ? c->max_aspect : 1.0 / c->min_aspect));
		break;
	case D2V_MASK_SPAN:
		json_object_set_new(meta, "prob", json_real(c->prob));
		json_object_set_new(meta, "length", json_integer(c->length));
		json_object_set_new(meta, "min_masks",
		    json_integer(c->min_masks));
		json_object_set_new(meta, "same_count", json_true());
		break;
	case D2V_MASK_RANDOM:
		json_object_set_new(meta, "prob", json_real(c->prob));
		break;
	case D2V_MASK_BERT:
		json_object_set_new(meta, "prob", json_real(c->prob));
		json_object_set_new(meta, "length", json_integer(c->length));
		json_object_set_new(meta, "leave_unmasked",
		    json_real(c->leave_unmasked));
		json_object_set_new(meta, "random_token",
		    json_real(c->random_token));
		break;
	default:
		break;
	}

	if (s == D2V_MASK_BERT) {
		static const char *const sp[] = {"bos", "eos", "pad", "unk"};
		d2v_mask_vocab *v = &jb->vocab;
		int64_t mask = tok_int(tok, "mask");

		v->size = tok_int(tok, "vocab_size");
		if (mask < 0)
			d2v_fatal(1, "--strategy bert needs the <mask> id, and "
			    "the header has none (meta.tokenize.mask); use a "
			    "vocabulary with a mask id, or --strategy random");
		if (v->size <= 0 || mask >= v->size)
			d2v_fatal(1, "--strategy bert needs the vocabulary size "
			    "(meta.tokenize.vocab_size) above the mask id %lld",
			    (long long)mask);
		v->mask = (int32_t)mask;
		v->special[v->nspecial++] = v->mask;
		for (int i = 0; i < 4; i++) {
			int64_t id = tok_int(tok, sp[i]);

			if (id >= 0 && id < v->size)
				v->special[v->nspecial++] = (int32_t)id;
		}
		json_object_set_new(meta, "mask_id", json_integer(mask));
	}
	jb->rng = calloc((size_t)jb->copies, sizeof *jb->rng);
	if (jb->rng == NULL)
		d2v_fatal(1, "out of memory");
	return meta;
}

/* 64-bit FNV-1a of the record id, for --key id. */
static uint64_t
id_hash(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
	return h;
}

/* Masks one record in place; 0 or a negative code with err filled. */
static int
mask_record(job *jb, d2v_record *rec, d2v_err *err)
{
	d2v_tensor *x = d2v_record_tensor(rec, "x"), mask = {0}, xm = {0};
	int64_t gh = 1, gw = 0, shape[2];
	uint64_t key;
	int rc, M = jb->copies;

	if (x == NULL)
		return d2v_err_set(err, D2V_EFORMAT, "record has no x tensor");
	if (!opt.replace && d2v_record_field(rec, "mask") != NULL)
		return d2v_err_set(err, D2V_EFORMAT, "record already has a "
		    "mask (use --replace to mask it again)");
	switch (jb->mod) {
	case MOD_IMAGE: {
		int64_t h, w;

		if (x->rank < 2)
			return d2v_err_set(err, D2V_EFORMAT, "image x has rank "
			    "%d, not [C, H, W]", x->rank);
		h = x->shape[x->rank - 2];
		w = x->shape[x->rank - 1];
		if (jb->size > 0 && (h != jb->size || w != jb->size))
			return d2v_err_set(err, D2V_EFORMAT, "image x is %lldx%lld"
			    ", the header says %lld", (long long)h, (long long)w,
			    (long long)jb->size);
		if (h % opt.patch != 0 || w % opt.patch != 0)
			return d2v_err_set(err, D2V_EINVAL, "image %lldx%lld is "
			    "not divisible by the patch size %ld",
			    (long long)h, (long long)w, opt.patch);
		gh = h / opt.patch;
		gw = w / opt.patch;
		break;
	}
	case MOD_AUDIO: {
		int64_t t = x->rank > 0 ? x->shape[x->rank - 1] : 1;

		if (d2v_tensor_numel(x) != t)
			return d2v_err_set(err, D2V_EFORMAT, "audio x is not one "
			    "channel of samples [T]");
		gw = d2v_mask_audio_frames(t);
		if (gw < 1)
			return d2v_err_set(err, D2V_EINVAL, "%lld samples are "
			    "too short to mask: the conv encoder needs at least "
			    "400 (one frame)", (long long)t);
		break;
	}
	case MOD_TEXT:
		if (x->rank != 1)
			return d2v_err_set(err, D2V_EFORMAT, "text x has rank "
			    "%d, not [T]", x->rank);
		if (x->dtype != D2V_DTYPE_I32)
			return d2v_err_set(err, D2V_EFORMAT, "text x is %s, not "
			    "i32 ids", d2v_dtype_name(x->dtype));
		gw = x->shape[0];
		break;
	}
	if ((rc = d2v_mask_check_size(&jb->cfg, gh, gw, err)) < 0)
		return rc;
	shape[0] = M;
	shape[1] = gh * gw;
	if ((rc = d2v_tensor_init(&mask, D2V_DTYPE_U8, 2, shape, err)) < 0)
		return rc;
	key = opt.key_id ? id_hash(rec->id, rec->id_len) :
	    (uint64_t)rec->index + (uint64_t)opt.offset;
	for (int m = 0; m < M; m++)
		d2v_rng_seed(&jb->rng[m], opt.seed, key, (uint64_t)m);
	if (jb->cfg.strategy == D2V_MASK_BERT) {
		if ((rc = d2v_tensor_init(&xm, D2V_DTYPE_I32, 2, shape,
		    err)) < 0)
			goto fail;
		for (int m = 0; m < M && rc == 0; m++)
			rc = d2v_mask_bert(&jb->cfg, &jb->vocab, x->data, gw,
			    &jb->rng[m], (uint8_t *)mask.data + m * gw,
			    (int32_t *)xm.data + m * gw, err);
	} else {
		rc = d2v_mask_rows(&jb->cfg, gh, gw, M, jb->rng, mask.data,
		    err);
	}
	if (rc < 0)
		goto fail;
	if ((rc = d2v_record_set_tensor(rec, "mask", &mask, err)) < 0)
		goto fail;
	if (xm.data != NULL)
		rc = d2v_record_set_tensor(rec, "x_masked", &xm, err);
	else
		d2v_record_remove(rec, "x_masked");
fail:
	d2v_tensor_free(&mask);
	d2v_tensor_free(&xm);
	return rc;
}

int
main(int argc, char **argv)
{
	const char *in, *name;
	int fd, rc, progress;
	double last = 0.0;
	json_t *hdr;
	d2v_reader *r;
	d2v_writer *w;
	d2v_record rec;
	d2v_out o;
	d2v_err err;
	job jb = {0};

	d2v_cli_init("d2v-mask", 1);
	parse_args(argc, argv);
	in = optind < argc ? argv[optind] : "-";
	name = strcmp(in, "-") ? in : "stdin";
	progress = d2v_progress_enabled(opt.progress);
	fd = d2v_open_in(in);
	if (d2v_reader_open_fd(&r, fd, name, &err) < 0 ||
	    d2v_reader_begin(r, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	if (d2v_header_has_stage(d2v_reader_header(r), "mask") &&
	    !opt.replace) {
		const json_t *old = d2v_header_meta(d2v_reader_header(r), "mask");
		const char *os = json_string_value(json_object_get(old,
		    "strategy"));

		d2v_fatal(1, "%s: the stream is already masked (strategy %s); "
		    "use --replace to mask it again", name, os ? os : "?");
	}
	hdr = json_deep_copy(d2v_reader_header(r));
	if (hdr == NULL)
		d2v_fatal(1, "out of memory");
	{
		json_t *meta = setup(&jb, hdr);

		if (d2v_header_has_stage(hdr, "mask"))
			rc = json_object_set_new(json_object_get(hdr, "meta"),
			    "mask", meta) == 0 ? 0 :
			    d2v_err_set(&err, D2V_ENOMEM, "out of memory");
		else
			rc = d2v_header_add_stage(hdr, "mask", meta, &err);
		if (rc < 0)
			d2v_fatal(1, "%s", err.msg);
	}
	d2v_out_open(&o, opt.output, 1);
	if (d2v_writer_open_fd(&w, o.fd, o.name, &err) < 0 ||
	    d2v_writer_header(w, hdr, &err) < 0)
		d2v_fatal(1, "%s", err.msg);

	d2v_record_init(&rec);
	while ((rc = d2v_reader_next(r, &rec, &err)) > 0) {
		d2v_err rerr;

		if (mask_record(&jb, &rec, &rerr) < 0) {
			d2v_writer_flush(w, &err);
			d2v_fatal(1, "%s: record %lld (id %s): %s", name,
			    (long long)rec.index, d2v_cli_id(&rec), rerr.msg);
		}
		if (d2v_writer_record(w, &rec, &err) < 0)
			d2v_fatal(1, "%s", err.msg);
		if (progress && (rec.index & 255) == 0 && d2v_now() - last > 0.5) {
			last = d2v_now();
			fprintf(stderr, "\rd2v-mask: %lld records",
			    (long long)rec.index + 1);
		}
	}
	if (progress)
		fprintf(stderr, "\rd2v-mask: %lld records\n",
		    (long long)d2v_reader_records(r));
	if (rc < 0) {
		d2v_err werr;

		d2v_writer_flush(w, &werr);
		d2v_fatal(1, "%s", err.msg);
	}
	if (d2v_writer_end(w, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	d2v_writer_free(w);
	d2v_reader_free(r);
	if (fd != 0)
		close(fd);
	d2v_record_clear(&rec);
	json_decref(hdr);
	free(jb.rng);
	d2v_out_commit(&o);
	return 0;
}
