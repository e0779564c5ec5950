/*
 * d2v-teacher - add a checkpoint's EMA-teacher targets (or features) to
 * every record of a stream: the cache stage.
 *
 * Usage: d2v-teacher -c CHECKPOINT [OPTION]... [FILE]
 */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cli.h"
#include "model/model.h"
#include "stream.h"
#include "train/checkpoint.h"

static const char usage_text[] =
"Usage: d2v-teacher -c CHECKPOINT [OPTION]... [FILE]\n"
"Run the checkpoint's EMA teacher on the unmasked input of every record of\n"
"a stream (FILE or standard input) and add its targets: target [N,D] (and\n"
"target_cls [D] for images); or, with --features, a layer's output.\n"
"Everything else in the records passes through.\n"
"\n"
"  -c, --checkpoint PATH  the checkpoint (d2v-train)\n"
"      --dtype T          f16 (default) or f32 for the added tensors\n"
"      --features LAYER   emit block LAYER's output (0-based, -1 = last) as\n"
"                         \"features\" instead of targets\n"
"      --pool P           with --features: none [N+E,D] (default; E = 1,\n"
"                         the CLS, for images), mean (over patches, frames\n"
"                         or tokens) or cls (images), both [D]\n"
"      --student          use the student weights instead of the teacher's\n"
"      --objective v1|v2  check that the checkpoint's objective is this\n"
"  -b, --batch N          samples per forward pass (default 32)\n"
"      --device D         cpu (default) or cuda (d2v-train(1))\n"
"      --precision P      fp32 or bf16 linear layers (d2v-train(1)); the\n"
"                         default is fp32 on the CPU, bf16 on cuda\n"
"  -o, --output FILE      write FILE (atomically) instead of standard output\n"
"  -q, --quiet  -h, --help  --version\n";

enum {
	O_DTYPE = 256, O_FEATURES, O_POOL, O_STUDENT, O_OBJECTIVE, O_PRECISION,
	O_DEVICE,
	O_VERSION
};

static const struct option longopts[] = {
	{"checkpoint", required_argument, NULL, 'c'},
	{"dtype", required_argument, NULL, O_DTYPE},
	{"objective", required_argument, NULL, O_OBJECTIVE},
	{"features", required_argument, NULL, O_FEATURES},
	{"pool", required_argument, NULL, O_POOL},
	{"student", no_argument, NULL, O_STUDENT},
	{"batch", required_argument, NULL, 'b'},
	{"precision", required_argument, NULL, O_PRECISION},
	{"device", required_argument, NULL, O_DEVICE},
	{"output", required_argument, NULL, 'o'},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, O_VERSION},
	{NULL, 0, NULL, 0},
};

static struct {
	const char *ckpt, *output, *pool, *objective;
	d2v_dtype dtype;
	int features, layer, student, quiet, bf16, cuda;
	long batch;
} opt = {.dtype = D2V_DTYPE_F16, .pool = "none", .batch = 32, .bf16 = -1};

static void
sha256_file(const char *path, char hex[65])
{
	unsigned char buf[1 << 16], md[32];
	unsigned int len = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	FILE *f = fopen(path, "rb");
	size_t n;

	hex[0] = '\0';
	if (f == NULL || ctx == NULL || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
		if (f)
			fclose(f);
		EVP_MD_CTX_free(ctx);
		d2v_fatal(1, "sha256 of %s failed", path);
	}
	while ((n = fread(buf, 1, sizeof buf, f)) > 0)
		EVP_DigestUpdate(ctx, buf, n);
	EVP_DigestFinal_ex(ctx, md, &len);
	EVP_MD_CTX_free(ctx);
	fclose(f);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* Makes a tensor of dtype opt.dtype from f32 data (shape given). */
static void
add_tensor(d2v_record *rec, const char *key, const float *data, int rank,
    const int64_t *shape)
{
	d2v_tensor f, t;
	d2v_err err;
	int rc;

	f.dtype = D2V_DTYPE_F32;
	f.rank = rank;
	memcpy(f.shape, shape, sizeof(int64_t) * (size_t)rank);
	f.data = (void *)data;
	f.nbytes = (size_t)d2v_tensor_numel(&f) * 4;
	rc = d2v_tensor_convert(&t, &f, opt.dtype, &err);
	if (rc == 0)
		rc = d2v_record_set_tensor(rec, key, &t, &err);
	if (rc < 0)
		d2v_fatal(1, "%s", err.msg);
}

int
main(int argc, char **argv)
{
	const char *in = NULL, *in_name;
	d2v_model m;
	d2v_reader *r;
	d2v_writer *w;
	d2v_record *recs;
	d2v_err err;
	d2v_out out;
	json_t *hdr, *meta;
	char sha[65];
	long step = 0;
	int c, fd, rc, E, D, nrec = 0, status = 0, *lens;
	char *xs = NULL;
	float *y = NULL, *ycls = NULL, *feat;

	d2v_cli_init("d2v-teacher", 1);
	while ((c = getopt_long(argc, argv, "c:b:o:qh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': opt.ckpt = optarg; break;
		case 'b': opt.batch = d2v_parse_long("--batch", optarg, 1, 4096); break;
		case 'o': opt.output = optarg; break;
		case 'q': opt.quiet = 1; break;
		case 'h': fputs(usage_text, stdout); return 0;
		case O_VERSION: d2v_version();
		case O_DTYPE:
			if (strcmp(optarg, "f16") == 0)
				opt.dtype = D2V_DTYPE_F16;
			else if (strcmp(optarg, "f32") == 0)
				opt.dtype = D2V_DTYPE_F32;
			else
				d2v_usage("--dtype: '%s' is not f16 or f32", optarg);
			break;
		case O_FEATURES:
			opt.features = 1;
			opt.layer = (int)d2v_parse_long("--features", optarg, -1, 4096);
			break;
		case O_POOL:
			if (strcmp(optarg, "none") && strcmp(optarg, "mean") &&
			    strcmp(optarg, "cls"))
				d2v_usage("--pool: '%s' is not none, mean or cls", optarg);
			opt.pool = optarg;
			break;
		case O_STUDENT: opt.student = 1; break;
		case O_PRECISION: opt.bf16 = d2v_parse_precision(optarg); break;
		case O_DEVICE: opt.cuda = d2v_parse_device(optarg); break;
		case O_OBJECTIVE:
			if (strcmp(optarg, "v1") && strcmp(optarg, "v2"))
				d2v_usage("--objective: '%s' is not v1 or v2", optarg);
			opt.objective = optarg;
			break;
		default: d2v_usage("unknown option");
		}
	}
	if (opt.ckpt == NULL)
		d2v_usage("give the checkpoint with -c");
	if (argc - optind > 1)
		d2v_usage("one input at most (concatenate with cat)");
	if (strcmp(opt.pool, "none") && !opt.features)
		d2v_usage("--pool goes with --features");
	in = optind < argc ? argv[optind] : NULL;
	in_name = in && strcmp(in, "-") ? in : "stdin";
	if (d2v_checkpoint_load(opt.ckpt, &m, d2v_cli_backend(opt.cuda,
	    &opt.bf16, opt.quiet), &step, NULL, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	if (m.unverified)
		d2v_warn("%s has no data digest (data_sha256; written by "
		    "another tool?): its data cannot be checked", opt.ckpt);
	if (opt.objective && strcmp(opt.objective, m.cfg.objective) != 0)
		d2v_fatal(1, "%s: a %s checkpoint; --objective %s asks for the "
		    "targets of the other objective", opt.ckpt, m.cfg.objective,
		    opt.objective);
	if (opt.features && opt.layer >= m.nb)
		d2v_usage("--features %d: the model has %d blocks (0..%d)",
		    opt.layer, m.nb, m.nb - 1);
	sha256_file(opt.ckpt, sha);
	E = m.E;
	D = m.D;
	if (!E && !strcmp(opt.pool, "cls"))
		d2v_usage("--pool cls: a%s %s model has no CLS token (use mean)",
		    strcmp(m.cfg.modality, "audio") == 0 ? "n" : "", m.cfg.modality);

	fd = d2v_open_in(in);
	if (d2v_reader_open_fd(&r, fd, in_name, &err) < 0 ||
	    d2v_reader_begin(r, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	hdr = json_deep_copy(d2v_reader_header(r));
	d2v_check_stream_model(hdr, &m.cfg, in_name);
	if (d2v_header_has_stage(hdr, "teacher"))
		d2v_fatal(1, "%s: the stream already has a teacher stage", in_name);
	meta = json_pack("{s:s,s:s,s:I,s:i,s:i,s:s,s:s,s:s}", "checkpoint",
	    opt.ckpt, "sha256", sha, "step", (json_int_t)step, "dim", D,
	    "top_k", m.cfg.top_k, "dtype", d2v_dtype_name(opt.dtype),
	    "weights", opt.student ? "student" : "teacher", "precision",
	    opt.bf16 ? "bf16" : "fp32");
	if (E)
		json_object_set_new(meta, "patch", json_integer(m.cfg.patch));
	if (opt.features) {
		json_object_set_new(meta, "features", json_integer(opt.layer));
		json_object_set_new(meta, "pool", json_string(opt.pool));
	}
	if (d2v_header_add_stage(hdr, "teacher", meta, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	d2v_out_open(&out, opt.output, 1);
	if (d2v_writer_open_fd(&w, out.fd, out.name, &err) < 0 ||
	    d2v_writer_header(w, hdr, &err) < 0)
		d2v_fatal(1, "%s", err.msg);

	/* a batch holds records of one length: a record of another length
	 * waits in recs[nrec] while the batch before it runs */
	recs = calloc((size_t)opt.batch + 1, sizeof *recs);
	lens = calloc((size_t)opt.batch + 1, sizeof *lens);
	feat = malloc((size_t)D * sizeof(float));
	if (!recs || !lens || !feat)
		d2v_fatal(1, "out of memory");
	for (;;) {
		int flush;

		rc = d2v_reader_next(r, &recs[nrec], &err);
		if (rc > 0) {
			lens[nrec] = d2v_check_input(&recs[nrec], &m.cfg, in_name);
			nrec++;
			if (nrec <= opt.batch && lens[nrec - 1] == lens[0])
				if (nrec < opt.batch)
					continue;
		}
		/* run the first `flush` records: all, or all but a record of
		 * another length (or past the batch) */
		flush = rc > 0 && (lens[nrec - 1] != lens[0] || nrec > opt.batch) ?
		    nrec - 1 : nrec;
		if (flush > 0) {
			const float *P = opt.student ? m.params : m.teacher;
			int L = lens[0], T, N, mrc;
			size_t esz;

			if (d2v_model_set_length(&m, L, &err) < 0)
				d2v_fatal(1, "%s: record %lld (%s): %s", in_name,
				    (long long)recs[0].index,
				    d2v_cli_id(&recs[0]), err.msg);
			N = m.N;
			T = N + E;
			esz = E ? (size_t)m.cfg.channels * m.cfg.image_size *
			    m.cfg.image_size : (size_t)L * 4;
			if ((xs = realloc(xs, (size_t)flush * esz)) == NULL ||
			    (y = realloc(y, (size_t)flush * T * D * sizeof(float))) == NULL ||
			    (ycls = realloc(ycls, (size_t)flush * D * sizeof(float))) == NULL)
				d2v_fatal(1, "out of memory");
			for (int i = 0; i < flush; i++)
				memcpy(xs + (size_t)i * esz, d2v_record_tensor(&recs[i],
				    "x")->data, esz);
			mrc = opt.features ?
			    d2v_model_features(&m, P, xs, flush, opt.layer, y, &err) :
			    d2v_model_targets(&m, P, xs, flush, y, ycls, &err);
			if (mrc < 0)
				d2v_fatal(1, "%s", err.msg);
			for (int i = 0; i < flush; i++) {
				if (!opt.features) {
					add_tensor(&recs[i], "target", y + (size_t)i * N * D,
					    2, (int64_t[]){N, D});
					if (E && !d2v_config_is_v1(&m.cfg))
						add_tensor(&recs[i], "target_cls",
						    ycls + (size_t)i * D, 1, (int64_t[]){D});
				} else if (strcmp(opt.pool, "none") == 0) {
					add_tensor(&recs[i], "features",
					    y + (size_t)i * T * D, 2, (int64_t[]){T, D});
				} else {
					const float *f = y + (size_t)i * T * D;

					for (int d = 0; d < D; d++) {
						double s = 0;

						if (strcmp(opt.pool, "cls") == 0) {
							feat[d] = f[d];
							continue;
						}
						for (int n = E; n < T; n++)
							s += f[(size_t)n * D + d];
						feat[d] = (float)(s / N);
					}
					add_tensor(&recs[i], "features", feat, 1,
					    (int64_t[]){D});
				}
				if (d2v_writer_record(w, &recs[i], &err) < 0)
					d2v_fatal(1, "%s", err.msg);
				d2v_record_clear(&recs[i]);
			}
			if (flush < nrec) {
				d2v_record t = recs[0];

				recs[0] = recs[flush];
				recs[flush] = t;
				lens[0] = lens[flush];
			}
			nrec -= flush;
		}
		if (rc <= 0)
			break;
	}
	if (rc < 0) {
		/* every whole record before the error has been written */
		if (d2v_writer_flush(w, &err) < 0)
			d2v_warn("%s", err.msg);
		d2v_fatal(1, "%s", err.msg);
	}
	if (d2v_writer_end(w, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	d2v_out_commit(&out);
	d2v_writer_free(w);
	d2v_reader_free(r);
	for (int i = 0; i <= opt.batch; i++)
		d2v_record_clear(&recs[i]);
	free(recs); free(lens); free(xs); free(y); free(ycls); free(feat);
	json_decref(hdr);
	d2v_model_free(&m);
	return status;
}
