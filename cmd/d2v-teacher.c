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
"a stream (FILE or standard input) and add its targets: target [N,D] and\n"
"target_cls [D]; or, with --features, a layer's output.  Everything else in\n"
"the records passes through.\n"
"\n"
"  -c, --checkpoint PATH  the checkpoint (d2v-train)\n"
"      --dtype T          f16 (default) or f32 for the added tensors\n"
"      --features LAYER   emit block LAYER's output (0-based, -1 = last) as\n"
"                         \"features\" instead of targets\n"
"      --pool P           with --features: none [N+1,D] (default), mean\n"
"                         (over patches) or cls, both [D]\n"
"      --student          use the student weights instead of the teacher's\n"
"  -b, --batch N          images per forward pass (default 32)\n"
"  -o, --output FILE      write FILE (atomically) instead of standard output\n"
"  -q, --quiet  -h, --help  --version\n";

enum { O_DTYPE = 256, O_FEATURES, O_POOL, O_STUDENT, O_VERSION };

static const struct option longopts[] = {
	{"checkpoint", required_argument, NULL, 'c'},
	{"dtype", required_argument, NULL, O_DTYPE},
	{"features", required_argument, NULL, O_FEATURES},
	{"pool", required_argument, NULL, O_POOL},
	{"student", no_argument, NULL, O_STUDENT},
	{"batch", required_argument, NULL, 'b'},
	{"output", required_argument, NULL, 'o'},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, O_VERSION},
	{NULL, 0, NULL, 0},
};

static struct {
	const char *ckpt, *output, *pool;
	d2v_dtype dtype;
	int features, layer, student, quiet;
	long batch;
} opt = {.dtype = D2V_DTYPE_F16, .pool = "none", .batch = 32};

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
	int c, fd, rc, S, C, N, D, nrec = 0, status = 0;
	uint8_t *img;
	float *y, *ycls, *feat;

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
	if (d2v_checkpoint_load(opt.ckpt, &m, d2v_backend_cpu(), &step, NULL,
	    &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	if (opt.features && opt.layer >= m.nb)
		d2v_usage("--features %d: the model has %d blocks (0..%d)",
		    opt.layer, m.nb, m.nb - 1);
	sha256_file(opt.ckpt, sha);
	S = m.cfg.image_size;
	C = m.cfg.channels;
	N = m.N;
	D = m.D;

	fd = d2v_open_in(in);
	if (d2v_reader_open_fd(&r, fd, in_name, &err) < 0 ||
	    d2v_reader_begin(r, &err) < 0)
		d2v_fatal(1, "%s", err.msg);
	hdr = json_deep_copy(d2v_reader_header(r));
	if (strcmp(d2v_header_modality(hdr), "image") != 0)
		d2v_fatal(1, "%s: a %s stream; the checkpoint is an image model",
		    in_name, d2v_header_modality(hdr));
	if (json_integer_value(json_object_get(d2v_header_meta(hdr, "tokenize"),
	    "size")) != S)
		d2v_fatal(1, "%s: images of size %lld; the checkpoint's model takes "
		    "%d", in_name, (long long)json_integer_value(json_object_get(
		    d2v_header_meta(hdr, "tokenize"), "size")), S);
	if (d2v_header_has_stage(hdr, "teacher"))
		d2v_fatal(1, "%s: the stream already has a teacher stage", in_name);
	meta = json_pack("{s:s,s:s,s:I,s:i,s:i,s:i,s:s,s:s}", "checkpoint",
	    opt.ckpt, "sha256", sha, "step", (json_int_t)step, "dim", D,
	    "top_k", m.cfg.top_k, "patch", m.cfg.patch,
	    "dtype", d2v_dtype_name(opt.dtype),
	    "weights", opt.student ? "student" : "teacher");
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

	recs = calloc((size_t)opt.batch, sizeof *recs);
	img = malloc((size_t)opt.batch * C * S * S);
	y = malloc((size_t)opt.batch * (N + 1) * D * sizeof(float));
	ycls = malloc((size_t)opt.batch * D * sizeof(float));
	feat = malloc((size_t)D * sizeof(float));
	if (!recs || !img || !y || !ycls || !feat)
		d2v_fatal(1, "out of memory");
	for (;;) {
		rc = d2v_reader_next(r, &recs[nrec], &err);
		if (rc > 0) {
			d2v_tensor *x = d2v_record_tensor(&recs[nrec], "x");

			if (x == NULL || x->dtype != D2V_DTYPE_U8 || x->rank != 3 ||
			    x->shape[0] != C || x->shape[1] != S || x->shape[2] != S)
				d2v_fatal(1, "%s: record %lld (%s): x must be u8 "
				    "[%d,%d,%d]", in_name, (long long)recs[nrec].index,
				    recs[nrec].id, C, S, S);
			memcpy(img + (size_t)nrec * C * S * S, x->data, x->nbytes);
			if (++nrec < opt.batch)
				continue;
		}
		if (nrec > 0) {
			const float *P = opt.student ? m.params : m.teacher;
			int mrc = opt.features ?
			    d2v_model_features(&m, P, img, nrec, opt.layer, y, &err) :
			    d2v_model_targets(&m, P, img, nrec, y, ycls, &err);

			if (mrc < 0)
				d2v_fatal(1, "%s", err.msg);
			for (int i = 0; i < nrec; i++) {
				if (!opt.features) {
					add_tensor(&recs[i], "target", y + (size_t)i * N * D,
					    2, (int64_t[]){N, D});
					add_tensor(&recs[i], "target_cls", ycls + (size_t)i * D,
					    1, (int64_t[]){D});
				} else if (strcmp(opt.pool, "none") == 0) {
					add_tensor(&recs[i], "features",
					    y + (size_t)i * (N + 1) * D, 2,
					    (int64_t[]){N + 1, D});
				} else {
					const float *f = y + (size_t)i * (N + 1) * D;

					for (int d = 0; d < D; d++) {
						double s = 0;

						if (strcmp(opt.pool, "cls") == 0) {
							feat[d] = f[d];
							continue;
						}
						for (int n = 1; n <= N; n++)
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
			nrec = 0;
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
	for (int i = 0; i < opt.batch; i++)
		d2v_record_clear(&recs[i]);
	free(recs); free(img); free(y); free(ycls); free(feat);
	json_decref(hdr);
	d2v_model_free(&m);
	return status;
}
