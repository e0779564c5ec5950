/*
 * d2v-train - train a data2vec 2.0 student with its EMA teacher.
 *
 * Usage: d2v-train [OPTION]... -c CHECKPOINT [-i FILE]
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <omp.h>

#include "atomic.h"
#include "backend/gemm.h"
#include "cli.h"
#include "mask.h"
#include "prefetch.h"
#include "model/model.h"
#include "rng.h"
#include "stream.h"
#include "train/checkpoint.h"
#include "train/optim.h"

#ifdef D2V_HAVE_MPI
#include <mpi.h>
#endif
#if defined(D2V_HAVE_MPI) && defined(D2V_HAVE_NCCL)
#include <cuda_runtime_api.h>
#include <nccl.h>
#define D2V_NCCL 1
#endif

static const char usage_text[] =
"Usage: d2v-train [OPTION]... -c CHECKPOINT [-i FILE]\n"
"Train a data2vec 2.0 model (image, audio or text, from the stream) on a\n"
"masked stream (d2v-mask) from FILE or standard input, with an online EMA\n"
"teacher (or the stream's targets), and write checkpoints.\n"
"\n"
"Input and output:\n"
"  -i, --input FILE        read FILE (re-read for --epochs); default stdin\n"
"  -c, --checkpoint PATH   checkpoint to write (and to read with --resume)\n"
"      --resume            continue from CHECKPOINT, skipping consumed records\n"
"      --force             replace an existing CHECKPOINT (a fresh run refuses)\n"
"      --save-every N      also write the checkpoint every N steps\n"
"      --log FILE          JSON line per logged step\n"
"      --log-every N       log every N steps (default 1)\n"
"      --targets SRC       online (EMA teacher, default) or stream\n"
"      --epochs N          passes over FILE (default: 1, or as many as\n"
"                          --steps needs)\n"
"      --steps N           stop after N updates (and size the schedules)\n"
"      --until N           stop this run at update N (the schedules keep\n"
"                          their size; continue with --resume)\n"
"      --progress, --no-progress   force the progress line on or off\n"
"      --device D          cpu (default) or cuda: the first NVIDIA GPU\n"
"      --precision P       fp32 or bf16: the linear layers' products from\n"
"                          bf16 operands, summed in fp32 (on the CPU, oneDNN\n"
"                          where it has bf16 units, else emulated); the\n"
"                          default is fp32 on the CPU, bf16 on cuda\n"
"Model (defaults from --preset, tiny unless given):\n"
"      --preset NAME       tiny, small, base or large\n"
"      --dim D --heads H --mlp F --depth L --prenet P --top-k K\n"
"      --decoder-dim D --decoder-layers L --decoder-kernel K --decoder-groups G\n"
"      --conv-dim C        audio feature encoder channels (512)\n"
"      --objective v1|v2   data2vec (v1: the whole sequence, masked positions\n"
"                          replaced by a learned vector, no decoder) or\n"
"                          data2vec 2.0 (v2, the default)\n"
"      --layer-scale X --loss-beta X   v1: LayerScale init (images),\n"
"                          Smooth-L1 beta (0: L2)\n"
"Training (defaults: the data2vec 2.0 recipe of the stream's modality):\n"
"  -b, --batch B           samples per step of each process (images 16,\n"
"                          audio 8, text 64); an update takes B x K x ranks\n"
"      --accum K           K steps' gradients per update (default 1); under\n"
"                          mpirun, data parallel over the ranks (d2v-train(1))\n"
"      --lr X --min-lr X --warmup N --weight-decay X --clip X\n"
"      --beta1 X --beta2 X --adam-eps X\n"
"      --ema-decay X --ema-end-decay X --ema-anneal-end N\n"
"      --cls-loss X --noise-std X --seed N\n"
"      --dropout X --attention-dropout X --activation-dropout X\n"
"      --post-mlp-dropout X --drop-path X     student-only (images 0,\n"
"                          audio and text 0.1 but activation and drop path)\n"
"      --embed-dropout X (text) --context-dropout X (audio)\n"
"      --decoder-input-dropout X --layerdrop X (audio 0.05)\n"
"      --min-target-var X --min-pred-var X   stop when a variance collapses\n"
"  -q, --quiet  -h, --help  --version\n";

enum {
	O_RESUME = 256, O_SAVE_EVERY, O_LOG, O_LOG_EVERY, O_TARGETS, O_EPOCHS,
	O_STEPS, O_PROGRESS, O_NO_PROGRESS, O_PRESET, O_DIM, O_HEADS, O_MLP,
	O_DEPTH, O_PRENET, O_TOPK, O_DDIM, O_DLAYERS, O_DKERNEL, O_DGROUPS,
	O_LR, O_MINLR, O_WARMUP, O_WD, O_CLIP, O_B1, O_B2, O_AEPS, O_EMA,
	O_EMA_END, O_EMA_N, O_CLS, O_NOISE, O_SEED, O_MINTV, O_MINPV, O_VERSION,
	O_DROP, O_ADROP, O_ACTDROP, O_POSTDROP, O_DPATH, O_EDROP, O_CDROP,
	O_IDROP, O_LDROP, O_CONVDIM, O_OBJECTIVE, O_LSCALE, O_LBETA, O_UNTIL, O_PRECISION,
	O_DEVICE, O_ACCUM, O_FORCE
};

static const struct option longopts[] = {
	{"input", required_argument, NULL, 'i'},
	{"checkpoint", required_argument, NULL, 'c'},
	{"resume", no_argument, NULL, O_RESUME},
	{"force", no_argument, NULL, O_FORCE},
	{"save-every", required_argument, NULL, O_SAVE_EVERY},
	{"log", required_argument, NULL, O_LOG},
	{"log-every", required_argument, NULL, O_LOG_EVERY},
	{"targets", required_argument, NULL, O_TARGETS},
	{"epochs", required_argument, NULL, O_EPOCHS},
	{"steps", required_argument, NULL, O_STEPS},
	{"progress", no_argument, NULL, O_PROGRESS},
	{"no-progress", no_argument, NULL, O_NO_PROGRESS},
	{"preset", required_argument, NULL, O_PRESET},
	{"dim", required_argument, NULL, O_DIM},
	{"heads", required_argument, NULL, O_HEADS},
	{"mlp", required_argument, NULL, O_MLP},
	{"depth", required_argument, NULL, O_DEPTH},
	{"prenet", required_argument, NULL, O_PRENET},
	{"top-k", required_argument, NULL, O_TOPK},
	{"decoder-dim", required_argument, NULL, O_DDIM},
	{"decoder-layers", required_argument, NULL, O_DLAYERS},
	{"decoder-kernel", required_argument, NULL, O_DKERNEL},
	{"decoder-groups", required_argument, NULL, O_DGROUPS},
	{"batch", required_argument, NULL, 'b'},
	{"lr", required_argument, NULL, O_LR},
	{"min-lr", required_argument, NULL, O_MINLR},
	{"warmup", required_argument, NULL, O_WARMUP},
	{"weight-decay", required_argument, NULL, O_WD},
	{"clip", required_argument, NULL, O_CLIP},
	{"beta1", required_argument, NULL, O_B1},
	{"beta2", required_argument, NULL, O_B2},
	{"adam-eps", required_argument, NULL, O_AEPS},
	{"ema-decay", required_argument, NULL, O_EMA},
	{"ema-end-decay", required_argument, NULL, O_EMA_END},
	{"ema-anneal-end", required_argument, NULL, O_EMA_N},
	{"cls-loss", required_argument, NULL, O_CLS},
	{"noise-std", required_argument, NULL, O_NOISE},
	{"seed", required_argument, NULL, O_SEED},
	{"min-target-var", required_argument, NULL, O_MINTV},
	{"min-pred-var", required_argument, NULL, O_MINPV},
	{"dropout", required_argument, NULL, O_DROP},
	{"attention-dropout", required_argument, NULL, O_ADROP},
	{"activation-dropout", required_argument, NULL, O_ACTDROP},
	{"post-mlp-dropout", required_argument, NULL, O_POSTDROP},
	{"drop-path", required_argument, NULL, O_DPATH},
	{"embed-dropout", required_argument, NULL, O_EDROP},
	{"context-dropout", required_argument, NULL, O_CDROP},
	{"decoder-input-dropout", required_argument, NULL, O_IDROP},
	{"layerdrop", required_argument, NULL, O_LDROP},
	{"conv-dim", required_argument, NULL, O_CONVDIM},
	{"objective", required_argument, NULL, O_OBJECTIVE},
	{"until", required_argument, NULL, O_UNTIL},
	{"layer-scale", required_argument, NULL, O_LSCALE},
	{"loss-beta", required_argument, NULL, O_LBETA},
	{"precision", required_argument, NULL, O_PRECISION},
	{"device", required_argument, NULL, O_DEVICE},
	{"accum", required_argument, NULL, O_ACCUM},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, O_VERSION},
	{NULL, 0, NULL, 0},
};

/* Options that override the model and recipe: NAN / -1 when unset. */
static struct {
	const char *input, *ckpt, *log, *preset;
	int resume, stream_targets, progress, quiet, force;
	long save_every, log_every, epochs, steps, until, accum;
	long dim, heads, mlp, depth, prenet, topk, ddim, dlayers, dkernel,
	    dgroups, batch, warmup, ema_n, conv_dim;
	double lr, min_lr, wd, clip, b1, b2, aeps, ema, ema_end, cls, noise,
	    mintv, minpv, drop, adrop, actdrop, postdrop, dpath, edrop, cdrop,
	    idrop, ldrop, lscale, lbeta;
	const char *objective;
	int bf16, cuda;
	long long seed;
} opt = {
	.progress = -1, .log_every = 1, .accum = 1, .epochs = -1, .steps = -1, .dim = -1,
	.heads = -1, .mlp = -1, .depth = -1, .prenet = -1, .topk = -1,
	.ddim = -1, .dlayers = -1, .dkernel = -1, .dgroups = -1, .batch = -1,
	.warmup = -1, .ema_n = -1, .lr = NAN, .min_lr = NAN, .wd = NAN,
	.clip = NAN, .b1 = NAN, .b2 = NAN, .aeps = NAN, .ema = NAN,
	.ema_end = NAN, .cls = NAN, .noise = NAN, .mintv = NAN, .minpv = NAN,
	.drop = NAN, .adrop = NAN, .actdrop = NAN, .postdrop = NAN, .dpath = NAN,
	.edrop = NAN, .cdrop = NAN, .idrop = NAN, .ldrop = NAN, .conv_dim = -1,
	.lscale = NAN, .lbeta = NAN,
	.seed = -1, .bf16 = -1,
};

static volatile sig_atomic_t stop_signal;
/* the self-pipe of the signals: every read of the input also waits on it
 * (d2v_reader_set_interrupt), so that a signal stops one waiting on a
 * stalled input too */
static int sig_pipe[2] = {-1, -1};

static void
on_signal(int sig)
{
	int e = errno;

	stop_signal = sig;
	if (sig_pipe[1] >= 0 && write(sig_pipe[1], "s", 1) < 0) {
		/* full: a byte is there already */
	}
	errno = e;
}

static void
parse_args(int argc, char **argv)
{
	int c;

	while ((c = getopt_long(argc, argv, "i:c:b:qh", longopts, NULL)) != -1) {
		switch (c) {
		case 'i': opt.input = optarg; break;
		case 'c': opt.ckpt = optarg; break;
		case 'b': opt.batch = d2v_parse_long("--batch", optarg, 1, 1 << 20); break;
		case 'q': opt.quiet = 1; break;
		case 'h': fputs(usage_text, stdout); exit(0);
		case O_VERSION: d2v_version();
		case O_RESUME: opt.resume = 1; break;
		case O_FORCE: opt.force = 1; break;
		case O_SAVE_EVERY: opt.save_every = d2v_parse_long("--save-every", optarg, 1, LONG_MAX); break;
		case O_LOG: opt.log = optarg; break;
		case O_LOG_EVERY: opt.log_every = d2v_parse_long("--log-every", optarg, 1, LONG_MAX); break;
		case O_TARGETS:
			if (strcmp(optarg, "stream") == 0)
				opt.stream_targets = 1;
			else if (strcmp(optarg, "online") != 0)
				d2v_usage("--targets: '%s' is not online or stream", optarg);
			break;
		case O_EPOCHS: opt.epochs = d2v_parse_long("--epochs", optarg, 1, 1 << 30); break;
		case O_STEPS: opt.steps = d2v_parse_long("--steps", optarg, 1, LONG_MAX); break;
		case O_PROGRESS: opt.progress = 1; break;
		case O_NO_PROGRESS: opt.progress = 0; break;
		case O_PRESET: opt.preset = optarg; break;
		case O_DIM: opt.dim = d2v_parse_long("--dim", optarg, 4, 1 << 16); break;
		case O_HEADS: opt.heads = d2v_parse_long("--heads", optarg, 1, 1024); break;
		case O_MLP: opt.mlp = d2v_parse_long("--mlp", optarg, 1, 1 << 18); break;
		case O_DEPTH: opt.depth = d2v_parse_long("--depth", optarg, 1, 1024); break;
		case O_PRENET: opt.prenet = d2v_parse_long("--prenet", optarg, 0, 1024); break;
		case O_TOPK: opt.topk = d2v_parse_long("--top-k", optarg, 1, 1024); break;
		case O_DDIM: opt.ddim = d2v_parse_long("--decoder-dim", optarg, 1, 1 << 16); break;
		case O_DLAYERS: opt.dlayers = d2v_parse_long("--decoder-layers", optarg, 1, 64); break;
		case O_DKERNEL: opt.dkernel = d2v_parse_long("--decoder-kernel", optarg, 1, 15); break;
		case O_DGROUPS: opt.dgroups = d2v_parse_long("--decoder-groups", optarg, 1, 1 << 16); break;
		case O_LR: opt.lr = d2v_parse_double("--lr", optarg, 0, 10); break;
		case O_MINLR: opt.min_lr = d2v_parse_double("--min-lr", optarg, 0, 10); break;
		case O_WARMUP: opt.warmup = d2v_parse_long("--warmup", optarg, 0, LONG_MAX); break;
		case O_WD: opt.wd = d2v_parse_double("--weight-decay", optarg, 0, 10); break;
		case O_CLIP: opt.clip = d2v_parse_double("--clip", optarg, 0, 1e9); break;
		case O_B1: opt.b1 = d2v_parse_double("--beta1", optarg, 0, 0.999999); break;
		case O_B2: opt.b2 = d2v_parse_double("--beta2", optarg, 0, 0.999999); break;
		case O_AEPS: opt.aeps = d2v_parse_double("--adam-eps", optarg, 0, 1); break;
		case O_EMA: opt.ema = d2v_parse_double("--ema-decay", optarg, 0, 1); break;
		case O_EMA_END: opt.ema_end = d2v_parse_double("--ema-end-decay", optarg, 0, 1); break;
		case O_EMA_N: opt.ema_n = d2v_parse_long("--ema-anneal-end", optarg, 1, LONG_MAX); break;
		case O_CLS: opt.cls = d2v_parse_double("--cls-loss", optarg, 0, 1e6); break;
		case O_NOISE: opt.noise = d2v_parse_double("--noise-std", optarg, 0, 1e6); break;
		case O_SEED: opt.seed = d2v_parse_long("--seed", optarg, 0, LONG_MAX); break;
		case O_MINTV: opt.mintv = d2v_parse_double("--min-target-var", optarg, 0, 1e9); break;
		case O_MINPV: opt.minpv = d2v_parse_double("--min-pred-var", optarg, 0, 1e9); break;
		case O_DROP: opt.drop = d2v_parse_double("--dropout", optarg, 0, 0.99); break;
		case O_ADROP: opt.adrop = d2v_parse_double("--attention-dropout", optarg, 0, 0.99); break;
		case O_ACTDROP: opt.actdrop = d2v_parse_double("--activation-dropout", optarg, 0, 0.99); break;
		case O_POSTDROP: opt.postdrop = d2v_parse_double("--post-mlp-dropout", optarg, 0, 0.99); break;
		case O_DPATH: opt.dpath = d2v_parse_double("--drop-path", optarg, 0, 0.99); break;
		case O_EDROP: opt.edrop = d2v_parse_double("--embed-dropout", optarg, 0, 0.99); break;
		case O_CDROP: opt.cdrop = d2v_parse_double("--context-dropout", optarg, 0, 0.99); break;
		case O_IDROP: opt.idrop = d2v_parse_double("--decoder-input-dropout", optarg, 0, 0.99); break;
		case O_LDROP: opt.ldrop = d2v_parse_double("--layerdrop", optarg, 0, 0.99); break;
		case O_CONVDIM: opt.conv_dim = d2v_parse_long("--conv-dim", optarg, 1, 4096); break;
		case O_OBJECTIVE:
			if (strcmp(optarg, "v1") && strcmp(optarg, "v2"))
				d2v_usage("--objective: '%s' is not v1 or v2", optarg);
			opt.objective = optarg;
			break;
		case O_PRECISION: opt.bf16 = d2v_parse_precision(optarg); break;
		case O_DEVICE: opt.cuda = d2v_parse_device(optarg); break;
		case O_ACCUM: opt.accum = d2v_parse_long("--accum", optarg, 1, 1 << 16); break;
		case O_UNTIL: opt.until = d2v_parse_long("--until", optarg, 1, LONG_MAX); break;
		case O_LSCALE: opt.lscale = d2v_parse_double("--layer-scale", optarg, 1e-12, 10); break;
		case O_LBETA: opt.lbeta = d2v_parse_double("--loss-beta", optarg, 0, 1e6); break;
		default: d2v_usage("unknown option");
		}
	}
	if (optind < argc)
		d2v_usage("unexpected argument '%s' (the input is -i FILE or "
		    "standard input)", argv[optind]);
	if (opt.ckpt == NULL)
		d2v_usage("give the checkpoint path with -c");
}

static const char *in_name;
/* v1 text: the <mask> id of the stream (meta.mask.mask_id) */
static int32_t mask_id = -1;

/* Image channels of the first record, for a stream whose header leaves
 * them to the source (d2v-tokenize of JPEGs without --channels). */
static int first_channels;

#define SET(field, v) do { if ((v) >= 0) c->field = (v); } while (0)
#define SETD(field, v) do { if (!isnan(v)) c->field = (v); } while (0)

/* The model config from the preset, the stream header and the options. */
static void
make_config(d2v_config *c, const json_t *hdr, long steps)
{
	json_t *tok = d2v_header_meta(hdr, "tokenize");
	json_t *mask = d2v_header_meta(hdr, "mask"), *v;
	d2v_err err;
	size_t i;

	const char *mod = d2v_header_modality(hdr);
	long total, hold0, warm0;

	if (d2v_config_preset(c, opt.preset ? opt.preset : "tiny", &err) < 0)
		d2v_usage("--preset: %s", err.msg);
	if (d2v_config_modality(c, mod, &err) < 0)
		d2v_fatal(1, "%s: %s", in_name, err.msg);
	if (opt.objective && d2v_config_objective(c, opt.objective, &err) < 0)
		d2v_fatal(1, "--objective: %s", err.msg);
	total = c->max_update;
	if (strcmp(mod, "text") == 0) {
		long block = d2v_header_int(hdr, "tokenize", "block", 0, 1 << 20, 0,
		    in_name);

		c->vocab = (int)d2v_header_int(hdr, "tokenize", "vocab_size", 0,
		    1 << 26, 0, in_name);
		if (c->vocab < 1)
			d2v_fatal(1, "%s: the header has no vocabulary size "
			    "(meta.tokenize.vocab_size)", in_name);
		if (block > 0)
			c->max_positions = (int)block;
	}
	if (opt.conv_dim > 0)
		c->conv_dim = (int)opt.conv_dim;
	/* the header's numbers, each in its range before it is used */
	c->image_size = (int)d2v_header_int(hdr, "tokenize", "size", 0, 1 << 16,
	    0, in_name);
	c->channels = (int)d2v_header_int(hdr, "tokenize", "channels", 0, 3, 0,
	    in_name);
	d2v_header_int(hdr, "mask", "patch", 1, 1 << 16, 16, in_name);
	d2v_header_int(hdr, "mask", "copies", 1, 4096, 1, in_name);
	if (c->channels == 0) /* "as decoded": the first record's */
		c->channels = first_channels;
	json_array_foreach(json_object_get(tok, "mean"), i, v)
		if (i < 3)
			c->mean[i] = json_number_value(v);
	json_array_foreach(json_object_get(tok, "std"), i, v)
		if (i < 3)
			c->std[i] = json_number_value(v);
	if (json_integer_value(json_object_get(mask, "patch")) > 0)
		c->patch = (int)json_integer_value(json_object_get(mask, "patch"));
	if (json_integer_value(json_object_get(mask, "copies")) > 0 &&
	    !d2v_config_is_v1(c)) /* v1: one copy, checked with the header */
		c->clone = (int)json_integer_value(json_object_get(mask, "copies"));
	SET(dim, opt.dim); SET(heads, opt.heads);
	c->mlp_dim = opt.mlp >= 0 ? (int)opt.mlp : 4 * c->dim;
	SET(depth, opt.depth); SET(prenet_depth, opt.prenet);
	/* top-K and the decoder width follow the depth and width given */
	if (opt.topk >= 0)
		c->top_k = (int)opt.topk;
	else if (d2v_config_is_v1(c) && d2v_config_is_image(c))
		c->top_k = c->depth >= 6 ? 6 : c->depth;
	else if (d2v_config_is_v1(c) && strcmp(mod, "text") == 0)
		c->top_k = (5 * c->depth + 3) / 6; /* 10 of 12 */
	else if (strcmp(mod, "audio") == 0)
		c->top_k = c->depth >= 3 ? (c->depth * 2 + 2) / 3 : c->depth;
	else
		c->top_k = c->depth;
	c->decoder_dim = opt.ddim >= 0 ? (int)opt.ddim :
	    strcmp(mod, "audio") == 0 && c->dim < 1024 ? c->dim / 2 : c->dim;
	SET(decoder_layers, opt.dlayers); SET(decoder_kernel, opt.dkernel);
	SET(decoder_groups, opt.dgroups); SET(batch, opt.batch);
	SETD(layer_scale, opt.lscale); SETD(loss_beta, opt.lbeta);
	SETD(lr, opt.lr); SETD(min_lr, opt.min_lr); SETD(weight_decay, opt.wd);
	SETD(clip_norm, opt.clip); SETD(beta1, opt.b1); SETD(beta2, opt.b2);
	SETD(eps, opt.aeps); SETD(ema_decay, opt.ema);
	SETD(ema_end_decay, opt.ema_end); SETD(cls_loss, opt.cls);
	SETD(mask_noise_std, opt.noise); SETD(min_target_var, opt.mintv);
	SETD(min_pred_var, opt.minpv);
	SETD(encoder_dropout, opt.drop); SETD(attention_dropout, opt.adrop);
	SETD(activation_dropout, opt.actdrop); SETD(post_mlp_drop, opt.postdrop);
	SETD(drop_path, opt.dpath);
	SETD(embed_dropout, opt.edrop); SETD(context_dropout, opt.cdrop);
	SETD(input_dropout, opt.idrop); SETD(layerdrop, opt.ldrop);
	if (opt.seed >= 0)
		c->seed = (unsigned long long)opt.seed;
	hold0 = c->hold;
	warm0 = c->warmup;
	/* the recipe's warmup and EMA anneal, as fractions of its updates */
	c->warmup = opt.warmup >= 0 ? opt.warmup :
	    (long)(steps * ((double)c->warmup / (double)total));
	c->ema_anneal_end_step = opt.ema_n >= 0 ? opt.ema_n :
	    (long)fmax(1, steps * ((double)c->ema_anneal_end_step / (double)total));
	/* tri_stage: the decay phase is the recipe's fraction too, the hold
	 * what lies between */
	{
		long decay = (long)(steps * ((double)(total - hold0 - warm0) /
		    (double)total));

		c->hold = steps - c->warmup - decay > 0 ? steps - c->warmup - decay : 0;
	}
	c->max_update = steps;
	if (d2v_config_check(c, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
}

/*
 * One batch: the records as read, then dense arrays for the model.  Audio
 * and text samples of different lengths are cropped to the shortest (audio
 * at a random offset in whole frames, 320 samples; text from its start),
 * their masks with them, and the masked counts equalised (DATA2VEC.md §2.2,
 * §4.7).
 */
typedef struct batch {
	int n, cap;
	d2v_record *rec;   /* (cap) */
	int *len;          /* (cap) samples or tokens */
	void *x;           /* (cap, C, S, S) u8, (cap, L) f32 or i32 */
	uint8_t *mask;     /* (cap*M, N) */
	int32_t *xm;       /* (cap, L) v1 text: x_masked */
	float *y, *ycls;   /* (cap, N, D), (cap, D) with --targets stream */
	float *tall;       /* (N_i, D) one record's uncropped target */
	size_t xcap, mcap, ycap, yccap, tcap, xmcap;
	int L;             /* the length batch_build cropped to */
	long count;        /* its masked positions (the loss's) */
} batch;

/* v1 text: the student reads x_masked, the teacher x */
static int
reads_x_masked(const d2v_config *c)
{
	return d2v_config_is_v1(c) && strcmp(c->modality, "text") == 0;
}

/* N of a sample of length len under the model's modality. */
static int
tokens_of(const d2v_config *c, int len)
{
	if (d2v_config_is_image(c))
		return d2v_config_tokens(c);
	if (strcmp(c->modality, "audio") == 0)
		return (int)d2v_mask_audio_frames(len);
	return len;
}

/* Checks the record just read into b->rec[b->n] and counts it. */
static void
batch_add(batch *b, const d2v_config *c)
{
	const d2v_record *rec = &b->rec[b->n];
	int M = c->clone, D = c->dim, len = d2v_check_input(rec, c, in_name);
	int N = tokens_of(c, len);
	d2v_tensor *mk = d2v_record_tensor(rec, "mask");

	if (mk == NULL)
		d2v_fatal(1, "%s: record %lld (%s): no mask; run d2v-mask first",
		    in_name, (long long)rec->index, d2v_cli_id(rec));
	if (mk->dtype != D2V_DTYPE_U8 || mk->rank != 2 || mk->shape[1] != N)
		d2v_fatal(1, "%s: record %lld (%s): mask must be u8 [%d,%d] (%d "
		    "%s)", in_name, (long long)rec->index, d2v_cli_id(rec), M,
		    N, N,
		    d2v_config_is_image(c) ? "patches" : strcmp(c->modality,
		    "audio") == 0 ? "frames of its samples" : "tokens");
	if (mk->shape[0] != M)
		d2v_fatal(1, "%s: record %lld (%s): mask has %lld copies, the "
		    "model trains with %d (d2v-mask --copies)", in_name,
		    (long long)rec->index, d2v_cli_id(rec),
		    (long long)mk->shape[0], M);
	if (reads_x_masked(c))
		d2v_check_x_masked(rec, c, in_name, N);
	if (opt.stream_targets) {
		d2v_tensor *t = d2v_record_tensor(rec, "target");
		d2v_tensor *tc = d2v_record_tensor(rec, "target_cls");
		int image = d2v_config_is_image(c) && !d2v_config_is_v1(c);

		if (t == NULL || t->rank != 2 || t->shape[0] != N ||
		    t->shape[1] != D || !d2v_dtype_is_float(t->dtype) ||
		    (image && (tc == NULL || tc->rank != 1 || tc->shape[0] != D ||
		    !d2v_dtype_is_float(tc->dtype))))
			d2v_fatal(1, "%s: record %lld (%s): --targets stream needs "
			    "target [%d,%d]%s (run d2v-teacher)", in_name,
			    (long long)rec->index, d2v_cli_id(rec), N, D,
			    image ? " and target_cls" : "");
	}
	b->len[b->n++] = len;
}

/* p with room for need bytes, its contents not kept: the backend's host
 * memory (page-locked on the GPU), as the step copies it in */
static void *
grow(const d2v_ops *o, void *p, size_t *cap, size_t need)
{
	if (need <= *cap)
		return p;
	o->host_release(p);
	*cap = 0;
	if ((p = o->host_alloc(need)) == NULL)
		d2v_fatal(1, "out of memory for a batch");
	*cap = need;
	return p;
}

/* Dense arrays of the batch at its shortest length; sets the model's
 * length.  Returns 0 when no loss position is left (a v1 text batch
 * without <mask>), else the batch's masked count (v1 text) or a positive
 * number. */
static long
batch_build(batch *b, d2v_model *m, d2v_rng *rng)
{
	const d2v_config *c = &m->cfg;
	const d2v_ops *o = m->ops;
	int M = c->clone, D = c->dim, L = b->len[0], N, audio;
	size_t esz;
	d2v_err err;

	audio = strcmp(c->modality, "audio") == 0;
	for (int i = 1; i < b->n; i++)
		if (b->len[i] < L)
			L = b->len[i];
	if (d2v_model_set_length(m, L, &err) < 0)
		d2v_fatal(1, "%s: %s", in_name, err.msg);
	b->L = L;
	N = tokens_of(c, L);
	esz = d2v_config_is_image(c) ? (size_t)c->channels * c->image_size *
	    c->image_size : (size_t)L * 4;
	b->x = grow(o, b->x, &b->xcap, (size_t)b->n * esz);
	b->mask = grow(o, b->mask, &b->mcap, (size_t)b->n * M * N);
	if (reads_x_masked(c))
		b->xm = grow(o, b->xm, &b->xmcap, (size_t)b->n * N *
		    sizeof(int32_t));
	if (opt.stream_targets) {
		b->y = grow(o, b->y, &b->ycap, (size_t)b->n * N * D *
		    sizeof(float));
		b->ycls = grow(o, b->ycls, &b->yccap, (size_t)b->n * D *
		    sizeof(float));
	}
	for (int i = 0; i < b->n; i++) {
		const d2v_record *rec = &b->rec[i];
		d2v_tensor *x = d2v_record_tensor(rec, "x");
		d2v_tensor *mk = d2v_record_tensor(rec, "mask");
		int Ni = (int)mk->shape[1], off = 0, foff = 0;

		if (audio && b->len[i] > L) {
			/* a whole number of frames (320 samples) so that the
			 * crop's frames are frames of the whole */
			foff = (int)d2v_rng_below(rng, (uint64_t)((b->len[i] - L) /
			    320 + 1));
			off = foff * 320;
		}
		/* off: samples, set for audio only */
		memcpy((char *)b->x + (size_t)i * esz, (const char *)x->data +
		    (size_t)off * 4, esz);
		d2v_mask_crop(b->mask + (size_t)i * M * N, mk->data, M, Ni, foff,
		    N);
		if (reads_x_masked(c)) {
			/* the ids the student reads; the loss where they are
			 * <mask> (data2vec_text; not the random or unchanged
			 * share of the selected tokens) */
			const int32_t *src = d2v_record_tensor(rec, "x_masked")->data;
			int32_t *dst = b->xm + (size_t)i * N;

			memcpy(dst, src, (size_t)N * sizeof(int32_t));
			for (int n = 0; n < N; n++)
				b->mask[(size_t)i * N + n] = dst[n] == mask_id;
		}
		if (opt.stream_targets) {
			d2v_tensor *t = d2v_record_tensor(rec, "target");
			d2v_tensor *tc = d2v_record_tensor(rec, "target_cls");
			/* the record's whole target, then its crop */
			b->tall = grow(o, b->tall, &b->tcap, (size_t)Ni * D *
			    sizeof(float));
			d2v_tensor_to_f32(t, b->tall);
			memcpy(b->y + (size_t)i * N * D, b->tall + (size_t)foff * D,
			    (size_t)N * D * sizeof(float));
			if (tc != NULL && d2v_config_is_image(c))
				d2v_tensor_to_f32(tc, b->ycls + (size_t)i * D);
		}
	}
	if (reads_x_masked(c)) {
		/* v1 keeps the whole sequence: counts may differ, and a batch
		 * of short lines may hold no <mask> at all */
		long k = 0;

		for (size_t i = 0; i < (size_t)b->n * N; i++)
			k += b->mask[i];
		return b->count = k;
	} else if (!d2v_config_is_image(c) && d2v_mask_equalize(b->mask,
	    b->n * M, N, rng) == 0)
		d2v_fatal(1, "%s: records %lld..%lld cropped to %d %s keep no "
		    "masked position in some copy", in_name,
		    (long long)b->rec[0].index, (long long)b->rec[b->n - 1].index,
		    N, audio ? "frames" : "tokens");
	b->count = 0;
	for (size_t i = 0; i < (size_t)b->n * M * N; i++)
		b->count += b->mask[i] != 0;
	return d2v_config_is_image(c) ? 1 : (long)N;
}

/* Data parallel under mpirun (Open MPI): every rank holds the model and
 * reads the whole input, and runs its share of each update's batches
 * (batch j of an update on rank j % nranks); the gradients and the step's
 * statistics are summed with MPI_Allreduce, so every rank makes the same
 * update; rank 0 alone writes the log and the checkpoints. */
static int rank, nranks = 1, mpi_on;
#ifdef D2V_NCCL
static ncclComm_t nccl;     /* the gradients' allreduce on GPUs */
static int nccl_on;
#endif

#ifdef D2V_HAVE_MPI
static void
mpi_abort_at_exit(void)
{
	/* a rank that exits early (bad input, a signal) takes the others
	 * with it instead of leaving them in MPI_Allreduce */
	if (mpi_on)
		MPI_Abort(MPI_COMM_WORLD, 1);
}
#endif

static void
dist_init(int *argc, char ***argv)
{
#ifdef D2V_HAVE_MPI
	if (getenv("OMPI_COMM_WORLD_SIZE") == NULL && getenv("PMIX_RANK") ==
	    NULL)
		return; /* not under mpirun: no MPI at all */
	if (MPI_Init(argc, argv) != MPI_SUCCESS)
		d2v_fatal(1, "MPI_Init failed");
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &nranks);
	mpi_on = 1;
	atexit(mpi_abort_at_exit);
#else
	(void)argc; (void)argv;
	if (getenv("OMPI_COMM_WORLD_SIZE") != NULL &&
	    atoi(getenv("OMPI_COMM_WORLD_SIZE")) > 1)
		d2v_fatal(1, "started by mpirun, but this d2v-train was built "
		    "without MPI (install libopenmpi-dev and rebuild)");
#endif
}

/* With --device cuda over several ranks, the gradients go through NCCL,
 * its communicator bootstrapped through MPI (rank 0's id broadcast). */
static void
dist_gpu_init(void)
{
#ifdef D2V_NCCL
	ncclUniqueId id;
	ncclResult_t e;

	if (!mpi_on || nranks < 2 || !opt.cuda)
		return;
	memset(&id, 0, sizeof id);
	if (rank == 0 && (e = ncclGetUniqueId(&id)) != ncclSuccess)
		d2v_fatal(1, "ncclGetUniqueId: %s", ncclGetErrorString(e));
	MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
	if ((e = ncclCommInitRank(&nccl, nranks, id, rank)) != ncclSuccess)
		d2v_fatal(1, "rank %d: ncclCommInitRank: %s", rank,
		    ncclGetErrorString(e));
	nccl_on = 1;
#endif
}

static void
dist_end(void)
{
#ifdef D2V_NCCL
	if (nccl_on) {
		nccl_on = 0;
		ncclCommDestroy(nccl);
	}
#endif
#ifdef D2V_HAVE_MPI
	if (mpi_on) {
		mpi_on = 0;
		MPI_Finalize();
	}
#endif
}

/* x (n) summed over the ranks, in place */
static void
dist_sum_f(float *x, size_t n)
{
#ifdef D2V_NCCL
	if (nccl_on) {
		ncclResult_t e = ncclAllReduce(x, x, n, ncclFloat, ncclSum, nccl,
		    0);
		cudaError_t ce;

		if (e != ncclSuccess)
			d2v_fatal(1, "ncclAllReduce: %s", ncclGetErrorString(e));
		if ((ce = cudaStreamSynchronize(0)) != cudaSuccess)
			d2v_fatal(1, "ncclAllReduce: %s", cudaGetErrorString(ce));
		return;
	}
#endif
#ifdef D2V_HAVE_MPI
	for (size_t o = 0; mpi_on && nranks > 1 && o < n; o += 1 << 28) {
		int k = (int)(n - o < (size_t)1 << 28 ? n - o : (size_t)1 << 28);

		MPI_Allreduce(MPI_IN_PLACE, x + o, k, MPI_FLOAT, MPI_SUM,
		    MPI_COMM_WORLD);
	}
#else
	(void)x; (void)n;
#endif
}

static void
dist_sum_d(double *x, int n)
{
#ifdef D2V_HAVE_MPI
	if (mpi_on && nranks > 1)
		MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM,
		    MPI_COMM_WORLD);
#else
	(void)x; (void)n;
#endif
}

/* Counts the records of a file (to size the schedules). */
static long
count_records(const char *path)
{
	int fd = d2v_open_in(path), rc;
	d2v_reader *r;
	d2v_record rec;
	d2v_err err;
	long n = 0;

	d2v_record_init(&rec);
	d2v_reader_open_fd(&r, fd, path, &err);
	while ((rc = d2v_reader_next(r, &rec, &err)) > 0)
		n++;
	if (rc < 0)
		d2v_fatal(1, "%s", err.msg);
	d2v_record_clear(&rec);
	d2v_reader_free(r);
	close(fd);
	return n;
}

static void
save(const d2v_model *m, long step, const d2v_rng *rng)
{
	d2v_err err;

	if (d2v_checkpoint_save(opt.ckpt, m, step, rng, &err) < 0)
		d2v_fatal(1, "%s (the previous checkpoint, if any, is intact)",
		    err.msg);
}

/* Checks the header against the options and the model. */
static void
check_header(const json_t *hdr, const d2v_config *cfg)
{
	const char *mod = d2v_header_modality(hdr);

	if (mod == NULL || (strcmp(mod, "image") && strcmp(mod, "audio") &&
	    strcmp(mod, "text")))
		d2v_fatal(1, "%s: a stream of modality %s; d2v-train takes image, "
		    "audio or text", in_name, mod ? mod : "(none)");
	if (!d2v_header_has_stage(hdr, "mask"))
		d2v_fatal(1, "%s: the stream has no masks; run d2v-mask first",
		    in_name);
	if (cfg == NULL)
		return;
	d2v_check_stream_model(hdr, cfg, in_name);
	{
		const char *st = json_string_value(json_object_get(
		    d2v_header_meta(hdr, "mask"), "strategy"));
		long copies = (long)json_integer_value(json_object_get(
		    d2v_header_meta(hdr, "mask"), "copies"));

		if (!d2v_config_is_v1(cfg) && st != NULL && (!strcmp(st, "block") ||
		    !strcmp(st, "span") || !strcmp(st, "bert")))
			d2v_fatal(1, "%s: masks of strategy %s, a data2vec (v1) "
			    "strategy; the v2 objective needs masks of equal counts "
			    "(d2v-mask --strategy %s), or train with --objective v1",
			    in_name, st, d2v_config_is_image(cfg) ? "inverse-block" :
			    !strcmp(cfg->modality, "audio") ? "block1d" : "random");
		if (d2v_config_is_v1(cfg) && copies > 1)
			d2v_fatal(1, "%s: masks of %ld copies; the v1 objective takes "
			    "one mask per sample (d2v-mask --copies 1 --strategy "
			    "%s)", in_name, copies, d2v_config_is_image(cfg) ? "block" :
			    !strcmp(cfg->modality, "audio") ? "span" : "bert");
		if (reads_x_masked(cfg))
			mask_id = d2v_check_mask_id(hdr, cfg, in_name);
	}
	{
		long copies = (long)json_integer_value(json_object_get(
		    d2v_header_meta(hdr, "mask"), "copies"));

		if (copies > 0 && copies != cfg->clone)
			d2v_fatal(1, "%s: masks of %ld copies; the model trains "
			    "with %d (the d2v-mask --copies of its run)", in_name,
			    copies, cfg->clone);
	}
	if (opt.stream_targets) {
		json_t *tm = d2v_header_meta(hdr, "teacher");
		long dim = (long)json_integer_value(json_object_get(tm, "dim"));
		long topk = (long)json_integer_value(json_object_get(tm, "top_k"));

		if (!d2v_header_has_stage(hdr, "teacher"))
			d2v_fatal(1, "%s: --targets stream, but no d2v-teacher stage "
			    "made this stream", in_name);
		if (dim != cfg->dim || topk != cfg->top_k)
			d2v_fatal(1, "%s: targets from a teacher of width %ld and "
			    "top-K %ld; this model has width %d and top-K %d",
			    in_name, dim, topk, cfg->dim, cfg->top_k);
	}
}

/* --resume: a model or recipe flag that differs from the checkpoint's
 * config is refused (the checkpoint's is what continues); --steps
 * lengthens or shortens the schedules and is said. */
#define CONFLICT_L(o, field, flag) do { \
	if ((o) >= 0 && (long)(o) != (long)c->field) \
		d2v_usage("--resume: %s %ld conflicts with the checkpoint's %ld; " \
		    "drop it to continue, or start a new run", flag, (long)(o), \
		    (long)c->field); \
} while (0)
#define CONFLICT_D(o, field, flag) do { \
	if (!isnan(o) && fabs((o) - c->field) > 1e-12 * fabs(c->field)) \
		d2v_usage("--resume: %s %g conflicts with the checkpoint's %g; " \
		    "drop it to continue, or start a new run", flag, (double)(o), \
		    (double)c->field); \
} while (0)

static void
resume_conflicts(const d2v_config *c)
{
	if (opt.preset != NULL)
		d2v_usage("--resume: --preset is the checkpoint's already; drop it");
	if (opt.objective != NULL && strcmp(opt.objective,
	    d2v_config_is_v1(c) ? "v1" : "v2") != 0)
		d2v_usage("--resume: --objective %s conflicts with the checkpoint's "
		    "%s", opt.objective, d2v_config_is_v1(c) ? "v1" : "v2");
	CONFLICT_L(opt.dim, dim, "--dim");
	CONFLICT_L(opt.heads, heads, "--heads");
	CONFLICT_L(opt.mlp, mlp_dim, "--mlp");
	CONFLICT_L(opt.depth, depth, "--depth");
	CONFLICT_L(opt.prenet, prenet_depth, "--prenet");
	CONFLICT_L(opt.topk, top_k, "--top-k");
	CONFLICT_L(opt.ddim, decoder_dim, "--decoder-dim");
	CONFLICT_L(opt.dlayers, decoder_layers, "--decoder-layers");
	CONFLICT_L(opt.dkernel, decoder_kernel, "--decoder-kernel");
	CONFLICT_L(opt.dgroups, decoder_groups, "--decoder-groups");
	CONFLICT_L(opt.batch, batch, "--batch");
	CONFLICT_L(opt.warmup, warmup, "--warmup");
	CONFLICT_L(opt.ema_n, ema_anneal_end_step, "--ema-anneal-end");
	CONFLICT_L(opt.conv_dim, conv_dim, "--conv-dim");
	CONFLICT_L(opt.seed, seed, "--seed");
	CONFLICT_D(opt.lr, lr, "--lr");
	CONFLICT_D(opt.min_lr, min_lr, "--min-lr");
	CONFLICT_D(opt.wd, weight_decay, "--weight-decay");
	CONFLICT_D(opt.clip, clip_norm, "--clip");
	CONFLICT_D(opt.b1, beta1, "--beta1");
	CONFLICT_D(opt.b2, beta2, "--beta2");
	CONFLICT_D(opt.aeps, eps, "--adam-eps");
	CONFLICT_D(opt.ema, ema_decay, "--ema-decay");
	CONFLICT_D(opt.ema_end, ema_end_decay, "--ema-end-decay");
	CONFLICT_D(opt.cls, cls_loss, "--cls-loss");
	CONFLICT_D(opt.noise, mask_noise_std, "--noise-std");
	CONFLICT_D(opt.mintv, min_target_var, "--min-target-var");
	CONFLICT_D(opt.minpv, min_pred_var, "--min-pred-var");
	CONFLICT_D(opt.drop, encoder_dropout, "--dropout");
	CONFLICT_D(opt.adrop, attention_dropout, "--attention-dropout");
	CONFLICT_D(opt.actdrop, activation_dropout, "--activation-dropout");
	CONFLICT_D(opt.postdrop, post_mlp_drop, "--post-mlp-dropout");
	CONFLICT_D(opt.dpath, drop_path, "--drop-path");
	CONFLICT_D(opt.edrop, embed_dropout, "--embed-dropout");
	CONFLICT_D(opt.cdrop, context_dropout, "--context-dropout");
	CONFLICT_D(opt.idrop, input_dropout, "--decoder-input-dropout");
	CONFLICT_D(opt.ldrop, layerdrop, "--layerdrop");
	CONFLICT_D(opt.lscale, layer_scale, "--layer-scale");
	CONFLICT_D(opt.lbeta, loss_beta, "--loss-beta");
}

/* The step of a log line ({"step":N,...}), or -1 for another line. */
static long
log_line_step(const char *l)
{
	const char *k = strstr(l, "\"step\":");
	char *end;
	long v;

	if (k == NULL)
		return -1;
	v = strtol(k + 7, &end, 10);
	return end == k + 7 ? -1 : v;
}

/* The log, opened for a run from step: a fresh run writes it anew; a
 * resumed one keeps what the log holds up to the checkpoint's step and
 * drops the steps after it (trained again now), so that no step appears
 * twice. */
static FILE *
log_open(long step)
{
	FILE *f, *old;
	char *line = NULL;
	size_t cap = 0;
	d2v_atomic at;
	d2v_err err;

	if (!opt.resume || (old = fopen(opt.log, "r")) == NULL) {
		if ((f = fopen(opt.log, opt.resume ? "a" : "w")) == NULL)
			d2v_fatal(1, "--log %s: %s", opt.log, strerror(errno));
		return f;
	}
	/* cut back through a temporary, renamed over the log */
	if (d2v_atomic_open(&at, opt.log, 0666, &err) < 0)
		d2v_fatal(1, "--log: %s", err.msg);
	if (at.in_place) { /* a device or FIFO: nothing to cut */
		fclose(old);
		d2v_atomic_abort(&at);
		if ((f = fopen(opt.log, "a")) == NULL)
			d2v_fatal(1, "--log %s: %s", opt.log, strerror(errno));
		return f;
	}
	if ((f = fdopen(dup(at.fd), "w")) == NULL)
		d2v_fatal(1, "--log %s: %s", opt.log, strerror(errno));
	while (getline(&line, &cap, old) > 0)
		if (log_line_step(line) <= step)
			fputs(line, f);
	free(line);
	fclose(old);
	if (fflush(f) != 0 || ferror(f) || fclose(f) != 0 ||
	    d2v_atomic_commit(&at, &err) < 0) {
		d2v_atomic_abort(&at);
		d2v_fatal(1, "--log %s: cutting it back to step %ld failed",
		    opt.log, step);
	}
	if ((f = fopen(opt.log, "a")) == NULL)
		d2v_fatal(1, "--log %s: %s", opt.log, strerror(errno));
	return f;
}

/* a write error of the log stops training (the checkpoint of the last
 * --save-every, if any, is intact) */
static void
log_check(FILE *log)
{
	if (fflush(log) != 0 || ferror(log))
		d2v_fatal(1, "--log %s: write error: %s", opt.log, strerror(errno));
}

/* The log's first line of a run (and of each resumed part): what computed
 * it.  No "step" key, so that readers of the step lines can skip it. */
static void
log_header(FILE *log, long step)
{
	const char *bf16 = NULL;
	json_t *h;
	char *s;

	if (opt.bf16 && !opt.cuda)
		d2v_backend_cpu_bf16(&bf16);
	h = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:s, s:i, s:i, s:I}",
	    "d2v", D2V_VERSION, "device", opt.cuda ? "cuda" : "cpu",
	    "precision", opt.bf16 ? "bf16" : "fp32",
	    "gemm", opt.cuda ? "cuBLAS" : d2v_gemm_engine(), "bf16_gemm", bf16,
	    "cpu", d2v_cpu_name(), "threads", omp_get_max_threads(),
	    "ranks", nranks, "start_step", (json_int_t)step);
	if (h == NULL || (s = json_dumps(h, JSON_COMPACT)) == NULL)
		d2v_fatal(1, "out of memory for the log");
	fprintf(log, "%s\n", s);
	log_check(log);
	free(s);
	json_decref(h);
}

static void
log_step(FILE *log, long step, const d2v_step_out *o, double lr, double tau,
    double gnorm, double tps)
{
	fprintf(log, "{\"step\":%ld,\"loss\":%.7g,\"loss_reg\":%.7g,"
	    "\"loss_cls\":%.7g,\"lr\":%.7g,\"tau\":%.9g,\"grad_norm\":%.7g,"
	    "\"target_var\":%.7g,\"pred_var\":%.7g,\"tokens_per_sec\":%.1f}\n",
	    step, o->loss, o->loss_reg, o->loss_cls, lr, tau, gnorm,
	    o->target_var, o->pred_var, tps);
	log_check(log);
}

int
main(int argc, char **argv)
{
	d2v_model m;
	d2v_config cfg;
	d2v_rng rng;
	d2v_err err;
	d2v_record rec;
	d2v_reader *r;
	d2v_prefetch *pf = NULL; /* r, read ahead by a thread */
	batch *parts;
	float *acc = NULL; /* (lay.total) the update's gradient, parts > 1 */
	FILE *log = NULL;
	long step = 0, skip = 0, steps, saved_step = -1, seen = 0, nrec = -1;
	long epoch0 = 0, epochs, bs, nan_at = 0;
	int unsaved = 0; /* a signal before the first update: no checkpoint */
	int progress, fd, rc = 1, stop = 0, pending = 0, np, j = 0, file;
	struct stat st, ck;
	double tlast;
	const d2v_ops *ops;

	dist_init(&argc, &argv);
	d2v_cli_init("d2v-train", 1);
	if (getenv("D2V_FAULT_NAN_AT") != NULL)
		nan_at = atol(getenv("D2V_FAULT_NAN_AT"));
	parse_args(argc, argv);
	if (rank > 0) /* one voice: rank 0's */
		opt.quiet = 1;
	if (nranks > 1 && (opt.input == NULL || !strcmp(opt.input, "-")))
		d2v_usage("under mpirun every rank reads the input: give -i FILE");
	np = (int)opt.accum * nranks; /* batches per update */
	ops = d2v_cli_backend(opt.cuda, &opt.bf16, opt.quiet);
	dist_gpu_init();
	progress = d2v_progress_enabled(opt.quiet ? 0 : opt.progress);
	in_name = opt.input && strcmp(opt.input, "-") ? opt.input : "stdin";
	/* the output paths before anything is trained */
	if (d2v_atomic_check(opt.ckpt, &err) < 0)
		d2v_fatal(1, "-c: %s", err.msg);
	if (opt.log != NULL) {
		char *a = d2v_path_resolve(opt.log), *b = d2v_path_resolve(opt.ckpt);

		if (d2v_same_file(opt.log, opt.ckpt) || (a && b && !strcmp(a, b)))
			d2v_usage("--log and -c name the same file, %s: the log "
			    "would be lost", opt.ckpt);
		free(a);
		free(b);
	}
	if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
		d2v_fatal(1, "pipe: %s", strerror(errno));
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);

	fd = d2v_open_in(opt.input);
	/* a regular file named with -i: counted, and re-read for --epochs
	 * (standard input is read once, even from a file) */
	file = fd != 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
	if (opt.epochs > 1 && !file)
		d2v_usage("--epochs needs -i FILE, a regular file (%s is read "
		    "once)", in_name);
	if (d2v_reader_open_fd(&r, fd, in_name, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	d2v_reader_set_interrupt(r, sig_pipe[0]);
	if (d2v_reader_begin(r, &err) < 0) {
		if (stop_signal)
			d2v_fatal(1, "%s before the stream began; nothing trained",
			    strsignal(stop_signal));
		d2v_fatal(1, "%s", err.msg);
	}
	check_header(d2v_reader_header(r), NULL);
	d2v_record_init(&rec);
	if (!opt.resume && !strcmp(d2v_header_modality(d2v_reader_header(r)),
	    "image") && json_integer_value(json_object_get(d2v_header_meta(
	    d2v_reader_header(r), "tokenize"), "channels")) == 0) {
		/* the header leaves the channels to the images: read the first
		 * record now and train on it first */
		first_channels = d2v_first_channels(r, &rec, in_name);
		pending = 1;
	}
	steps = opt.steps;
	epochs = opt.epochs > 0 ? opt.epochs : 1;
	{
		const char *mod = d2v_header_modality(d2v_reader_header(r));

		bs = (opt.batch > 0 ? opt.batch : mod && !strcmp(mod, "audio") ?
		    8 : mod && !strcmp(mod, "text") ? 64 : 16) * np;
	}
	if (steps < 0 && !file)
		d2v_usage("give --steps when reading %s: it sizes the "
		    "learning-rate schedule, and %s cannot be counted without "
		    "consuming it", in_name, fd == 0 ? "standard input" :
		    "a pipe or device");
	if (!opt.resume && !opt.force && stat(opt.ckpt, &ck) == 0 &&
	    S_ISREG(ck.st_mode))
		d2v_fatal(1, "%s exists: --resume continues its run, --force "
		    "replaces it (or name another checkpoint)", opt.ckpt);
	/* the records of one pass: each pass ends with a short update
	 * where the batch does not divide them */
	if (file && (steps < 0 || opt.resume))
		nrec = count_records(opt.input);
	if (steps < 0) {
		steps = (nrec + bs - 1) / bs * epochs;
		if (steps < 1)
			d2v_fatal(1, "%s: no records to train on", in_name);
	}
	if (opt.resume) {
		if (d2v_checkpoint_load(opt.ckpt, &m, ops, &step, &rng,
		    &err) < 0)
			d2v_fatal(1, "--resume: %s", err.msg);
		if (m.unverified)
			d2v_warn("%s has no data digest (data_sha256; written by "
			    "another tool?): its data cannot be checked", opt.ckpt);
		cfg = m.cfg;
		resume_conflicts(&cfg);
		if (opt.steps > 0 && opt.steps != cfg.max_update) {
			if (opt.steps <= step)
				d2v_usage("--resume: --steps %ld, but the checkpoint is "
				    "at step %ld already", opt.steps, step);
			if (!opt.quiet)
				d2v_warn("--steps %ld: the schedules now end at step "
				    "%ld (the checkpoint's run was sized for %ld)",
				    opt.steps, opt.steps, cfg.max_update);
			cfg.max_update = opt.steps;
			m.cfg.max_update = opt.steps;
		}
		if (step >= cfg.max_update) {
			if (!opt.quiet)
				d2v_warn("%s is at step %ld of %ld: the run is "
				    "finished; nothing to do (--steps N lengthens it)",
				    opt.ckpt, step, cfg.max_update);
			goto nothing;
		}
		if (opt.until > 0 && opt.until <= step) {
			if (!opt.quiet)
				d2v_warn("%s is at step %ld, at or past --until %ld; "
				    "nothing to do", opt.ckpt, step, opt.until);
			goto nothing;
		}
		bs = (long)cfg.batch * np;
		if (nrec > 0) {
			long per = (nrec + bs - 1) / bs; /* updates per pass */

			epoch0 = step / per;
			skip = step % per * bs;
			if (opt.epochs > 0 && epoch0 >= opt.epochs)
				d2v_usage("--resume: the checkpoint is at step %ld, "
				    "past --epochs %ld of %ld records", step,
				    opt.epochs, nrec);
		} else {
			skip = step * bs;
		}
		saved_step = step;
	} else {
		make_config(&cfg, d2v_reader_header(r), steps);
		if (d2v_model_init(&m, &cfg, ops, &err) < 0)
			d2v_fatal(1, "%s", err.msg);
		d2v_params_init(&m.lay, &cfg, m.params, cfg.seed);
		d2v_model_sync_teacher(&m);
		d2v_rng_seed(&rng, cfg.seed, 0x7a11, 0);
	}
	check_header(d2v_reader_header(r), &cfg);
	if ((parts = calloc((size_t)np, sizeof *parts)) == NULL ||
	    (np > 1 && (acc = ops->alloc(m.lay.total * sizeof(float))) == NULL))
		d2v_fatal(1, "out of memory for %d batches", np);
	for (int p = 0; p < np; p++) {
		batch *b = &parts[p];

		b->cap = cfg.batch;
		b->rec = calloc((size_t)b->cap, sizeof *b->rec);
		b->len = calloc((size_t)b->cap, sizeof *b->len);
		if (!b->rec || !b->len)
			d2v_fatal(1, "out of memory for a batch of %d", b->cap);
		for (int i = 0; i < b->cap; i++)
			d2v_record_init(&b->rec[i]);
	}
	if (pending) {
		/* the first record, read for its channels */
		parts[0].rec[0] = rec;
		d2v_record_init(&rec);
	}
	if (rank == 0 && opt.log != NULL) {
		log = log_open(step);
		log_header(log, step);
	}
	/* without --epochs, as many passes as --steps needs */
	if (opt.epochs < 0)
		epochs = file ? LONG_MAX : 1;
	tlast = d2v_now();
	for (long epoch = epoch0; epoch < epochs && !stop; epoch++) {
		long step_before = step;

		if (epoch > epoch0) {
			d2v_prefetch_stop(pf);
			pf = NULL;
			d2v_reader_free(r);
			lseek(fd, 0, SEEK_SET);
			if (d2v_reader_open_fd(&r, fd, in_name, &err) < 0)
				d2v_fatal(1, "%s", err.msg);
			d2v_reader_set_interrupt(r, sig_pipe[0]);
			seen = 0;
			skip = 0;
		}
		/* the records of the next update are read while this one
		 * computes */
		if (d2v_prefetch_start(&pf, r, cfg.batch * np, &err) < 0)
			d2v_fatal(1, "%s", err.msg);
		for (;;) {
			d2v_step_out o = {0};
			double lr, tau, gnorm, t, sum[7] = {0};
			long total = 0, first, rows = 0;
			int mine = 0;
			batch *b = &parts[j];

			rc = pending ? 1 : d2v_prefetch_next(pf, &b->rec[b->n],
			    &err);
			pending = 0;
			if (rc > 0) {
				batch_add(b, &cfg); /* checks every record */
				if (seen++ < skip) {
					b->n = 0;
					continue;
				}
				if (b->n < b->cap)
					continue;
				if (j + 1 < np) {
					j++;
					continue;
				}
			}
			if (rc < 0 && stop_signal) {
				stop = 1; /* a signal stopped a read: as while computing */
			} else if (rc < 0) {
				d2v_warn("%s", err.msg);
				stop = 2;
			}
			/* an update: parts[0..j], the last one possibly short at
			 * the end of the input (never after an error) */
			if (parts[0].n == 0 || (rc < 0 && (j + 1 < np ||
			    b->n < b->cap)))
				break;
			/* first: the index of the update's first record */
			first = seen;
			for (int p = 0; p <= j; p++) {
				first -= parts[p].n;
				if (parts[p].n > 0 && batch_build(&parts[p], &m,
				    &rng) > 0)
					total += parts[p].count;
			}
			if (total == 0 && !reads_x_masked(&cfg))
				d2v_fatal(1, "%s: records %ld..%ld have no masked %s: "
				    "nothing to train on (masks of d2v-mask --prob 0, "
				    "or --count 0?); no checkpoint written", in_name,
				    first, seen - 1, d2v_config_is_image(&cfg) ?
				    "patch" : !strcmp(cfg.modality, "audio") ? "frame" :
				    "token");
			if (total == 0) {
				/* v1 text: no <mask> in these records; no update */
				if (!opt.quiet)
					d2v_warn("%s: records %ld..%ld hold no <mask> "
					    "token; skipped", in_name, first, seen - 1);
				for (int p = 0; p <= j; p++)
					parts[p].n = 0;
				j = 0;
				if (rc <= 0)
					break;
				continue;
			}
			for (int p = 0; p <= j; p++) {
				batch *q = &parts[p];
				d2v_step_out po;

				if (q->n == 0 || q->count == 0 || p % nranks != rank) {
					rows += (long)q->n * cfg.clone;
					continue;
				}
				if (d2v_model_set_length(&m, q->L, &err) < 0)
					d2v_fatal(1, "%s: %s", in_name, err.msg);
				if (reads_x_masked(&cfg))
					d2v_model_set_student_ids(&m, q->xm);
				m.row0 = rows;
				m.loss_count = np > 1 ? total : 0;
				if (d2v_model_step(&m, q->x, q->mask, NULL, q->y, q->ycls,
				    q->n, cfg.seed * 0x9e3779b97f4a7c15ull +
				    (uint64_t)step, &po, &err) < 0)
					d2v_fatal(1, "%s: records %lld..%lld: %s", in_name,
					    (long long)q->rec[0].index,
					    (long long)q->rec[q->n - 1].index, err.msg);
				rows += (long)q->n * cfg.clone;
				if (np > 1) {
					if (mine++ == 0)
						memcpy(acc, m.grads, m.lay.total *
						    sizeof(float));
					else
						ops->add(acc, m.grads, m.lay.total);
				}
				sum[0] += po.loss;
				sum[1] += po.loss_reg;
				sum[2] += po.loss_cls;
				sum[3] += po.target_var;
				sum[4] += po.pred_var;
				sum[5] += 1;
			}
			if (np > 1) {
				if (mine == 0)
					memset(acc, 0, m.lay.total * sizeof(float));
				dist_sum_f(acc, m.lay.total);
				/* a signal seen by any rank stops them all after
				 * this update */
				sum[6] = stop_signal != 0;
				dist_sum_d(sum, 7);
				memcpy(m.grads, acc, m.lay.total * sizeof(float));
			}
			o.loss = sum[0];
			o.loss_reg = sum[1];
			o.loss_cls = sum[2];
			o.target_var = sum[3] / sum[5];
			o.pred_var = sum[4] / sum[5];
			o.n_masked = total;
			if (nan_at > 0 && step + 1 == nan_at)
				o.loss = NAN; /* D2V_FAULT_NAN_AT: the tests' divergence */
			if (!isfinite(o.loss)) {
				if (saved_step >= 0)
					d2v_fatal(1, "step %ld: the loss is %g; stopping. "
					    "The last good checkpoint is %s (step %ld)",
					    step, o.loss, opt.ckpt, saved_step);
				d2v_fatal(1, "step %ld: the loss is %g; stopping. No "
				    "checkpoint was written yet", step, o.loss);
			}
			gnorm = d2v_train_update(&m, step, &lr, &tau);
			if (d2v_model_check(&m, &err) < 0)
				d2v_fatal(1, "step %ld: %s", step + 1, err.msg);
			step++;
			t = d2v_now();
			if (log && (step % opt.log_every == 0 || step == 1))
				log_step(log, step, &o, lr, tau, gnorm,
				    (double)rows * m.N / (t - tlast));
			if (progress)
				fprintf(stderr, "\rd2v-train: step %ld/%ld loss %.4f "
				    "lr %.2e tau %.6f", step, cfg.max_update, o.loss,
				    lr, tau);
			tlast = t;
			for (int p = 0; p <= j; p++)
				parts[p].n = 0;
			j = 0;
			if (cfg.min_target_var > 0 && o.target_var < cfg.min_target_var)
				d2v_fatal(1, "step %ld: target_var %.4g fell below "
				    "--min-target-var %.4g: the teacher collapsed", step,
				    o.target_var, cfg.min_target_var);
			if (cfg.min_pred_var > 0 && o.pred_var < cfg.min_pred_var)
				d2v_fatal(1, "step %ld: pred_var %.4g fell below "
				    "--min-pred-var %.4g: the student collapsed", step,
				    o.pred_var, cfg.min_pred_var);
			if (rank == 0 && opt.save_every > 0 &&
			    step % opt.save_every == 0) {
				save(&m, step, &rng);
				saved_step = step;
			}
			if (step >= cfg.max_update || (nranks > 1 ? sum[6] > 0 :
			    stop_signal != 0) || (opt.until > 0 && step >= opt.until)) {
				stop = stop ? stop : 1;
				break;
			}
			if (rc <= 0)
				break;
		}
		if (step == step_before && !stop)
			break; /* a pass without an update: no more would come */
	}
	if (progress)
		fputc('\n', stderr);
	if (step == 0 && !opt.resume) {
		/* nothing trained: no checkpoint of an untrained model */
		if (stop_signal) {
			if (!opt.quiet)
				d2v_warn("%s before the first update; no checkpoint "
				    "written", strsignal(stop_signal));
			unsaved = 1;
		} else if (stop == 2) {
			d2v_fatal(1, "%s: the error came before the first update; "
			    "no checkpoint written", in_name);
		} else {
			d2v_fatal(1, "%s: no record could train (v1 text: none "
			    "holds a <mask> token); no checkpoint written", in_name);
		}
	}
	if (rank == 0 && !unsaved)
		save(&m, step, &rng);
	if (unsaved) {
		/* said above */
	} else if (stop_signal) {
		if (!opt.quiet)
			d2v_warn("%s: stopped at step %ld; checkpoint %s written",
			    strsignal(stop_signal), step, opt.ckpt);
	} else if (stop == 2)
		d2v_warn("checkpoint %s written at step %ld, the last whole "
		    "update before the error (--resume continues from it)",
		    opt.ckpt, step);
	else if (step < cfg.max_update && !(opt.until > 0 && step >= opt.until) &&
	    !opt.quiet)
		d2v_warn("%s ended at step %ld of %ld%s: the schedules were sized "
		    "for %ld steps; give %s, or fewer --steps", in_name, step,
		    cfg.max_update, opt.epochs > 0 ? " (the --epochs given)" : "",
		    cfg.max_update, file ? "more --epochs" : "more input");
	if (log)
		fclose(log);
	d2v_record_clear(&rec);
	d2v_prefetch_stop(pf);
	d2v_reader_free(r);
	for (int p = 0; p < np; p++) {
		batch *b = &parts[p];

		for (int i = 0; i < b->cap; i++)
			d2v_record_clear(&b->rec[i]);
		free(b->rec); free(b->len);
		ops->host_release(b->x); ops->host_release(b->mask);
		ops->host_release(b->y); ops->host_release(b->xm);
		ops->host_release(b->ycls); ops->host_release(b->tall);
	}
	free(parts);
	ops->release(acc);
	d2v_model_free(&m);
	if (stop != 2)
		dist_end();
	return stop == 2 ? 1 : 0;
nothing:
	/* --resume with nothing to do: the checkpoint as it was */
	d2v_model_free(&m);
	d2v_record_clear(&rec);
	d2v_reader_free(r);
	close(fd);
	dist_end();
	return 0;
}
