/*
 * bench-step - time d2v's training step (model forward and backward, Adam,
 * clipping, EMA) on a benchmark configuration; the peer is
 * bench/train_peer.py on the same shapes.
 *
 * Usage: bench-step [B1|B2|B3|demo|tiny] [STEPS] [WARMUP] [fp32|bf16]
 *
 * B1, B2: data2vec 2.0 images, 224 pixels, 16-pixel patches, 157 of 196
 * masked, 8 copies, 4 images, width 192 (B1) or 384 (B2), 2 prenet + 10
 * main blocks, the 2-D decoder at the width with 6 layers.  B3: data2vec
 * 2.0 audio, 4 clips of 5 s (80000 samples, 249 frames), width 384, 6
 * heads, 12 blocks, top-K 8, 512 feature channels, 8 copies with 125
 * frames masked, the 1-D decoder (192 wide, kernel 7, 4 layers, 16
 * groups), ALiBi, no dropout (as the peer).  demo: make demo's model,
 * 64 Fashion-MNIST-sized images (28 pixels, 1 channel, 4-pixel patches,
 * 32 of 49 masked), 4 copies, width 96, 3 heads, 6 blocks, the decoder
 * 64 wide with 3 layers of 8 groups.
 * bf16: d2v-train --precision bf16 (the linear layers' products from bf16
 * operands; engine says whether oneDNN or the emulation ran them).
 * Prints one JSON line: config, precision, engine, threads, median_ms,
 * min_ms, max_rss_mb.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <omp.h>

#include "backend/gemm.h"
#include "model/model.h"
#include "rng.h"
#include "train/optim.h"

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int
cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : "B1";
	int steps = argc > 2 ? atoi(argv[2]) : 20, warm = argc > 3 ? atoi(argv[3]) : 3;
	int bf16 = argc > 4 && strcmp(argv[4], "bf16") == 0;
	const d2v_ops *ops = bf16 ? d2v_backend_cpu_bf16(NULL) : d2v_backend_cpu();
	int B = 4, masked = 157, S = 80000, audio = 0;
	d2v_config c;
	d2v_model m;
	d2v_err err;
	d2v_rng r;
	uint8_t *img, *mask;
	float *wave = NULL;
	const void *x;
	double *t;
	struct rusage ru;

	d2v_config_preset(&c, "tiny", NULL);
	c.clone = 8;
	c.decoder_layers = 6;
	c.decoder_groups = 16;
	c.max_update = 1000;
	c.warmup = 10;
	if (strcmp(name, "B2") == 0) {
		c.dim = 384; c.heads = 6;
	} else if (strcmp(name, "B3") == 0) {
		audio = 1;
		d2v_config_modality(&c, "audio", NULL);
		c.dim = 384; c.heads = 6; c.prenet_depth = 0; c.depth = 12;
		c.top_k = 8; c.conv_dim = 512; c.clone = 8;
		c.decoder_layers = 4; c.decoder_kernel = 7; c.decoder_groups = 16;
		c.encoder_dropout = c.attention_dropout = c.post_mlp_drop = 0;
		c.activation_dropout = c.context_dropout = c.input_dropout = 0;
		c.layerdrop = 0;
		masked = 125;
	} else if (strcmp(name, "tiny") == 0) {
		c.image_size = 28; c.patch = 4; c.channels = 1; c.dim = 64;
		c.heads = 4; c.prenet_depth = 0; c.depth = 4; c.top_k = 4;
		c.decoder_layers = 2; c.decoder_groups = 4; masked = 39;
	} else if (strcmp(name, "demo") == 0) {
		B = 64; masked = 32;
		c.image_size = 28; c.patch = 4; c.channels = 1; c.dim = 96;
		c.heads = 3; c.prenet_depth = 0; c.depth = 6; c.top_k = 6;
		c.clone = 4; c.decoder_layers = 3; c.decoder_groups = 8;
	} else if (strcmp(name, "B1") != 0) {
		fprintf(stderr, "bench-step: unknown config %s (B1, B2, B3, demo, "
		    "tiny)\n",
		    name);
		return 2;
	}
	c.mlp_dim = 4 * c.dim;
	c.decoder_dim = audio ? c.dim / 2 : strcmp(name, "demo") == 0 ? 64 :
	    c.dim;
	if (argc > 4 && !bf16 && strcmp(argv[4], "fp32") != 0) {
		fprintf(stderr, "bench-step: precision %s is not fp32 or bf16\n",
		    argv[4]);
		return 2;
	}
	if (steps < 1 || warm < 0) {
		fprintf(stderr, "bench-step: STEPS must be at least 1, WARMUP 0 or more\n");
		return 2;
	}
	if (d2v_model_init(&m, &c, ops, &err) < 0) {
		fprintf(stderr, "bench-step: %s\n", err.msg);
		return 1;
	}
	if (audio && d2v_model_set_length(&m, S, &err) < 0) {
		fprintf(stderr, "bench-step: %s\n", err.msg);
		return 1;
	}
	d2v_params_init(&m.lay, &c, m.params, 1);
	d2v_model_sync_teacher(&m);
	img = malloc((size_t)B * c.channels * c.image_size * c.image_size);
	mask = calloc((size_t)B * c.clone * m.N, 1);
	t = malloc(sizeof *t * (size_t)(steps > 0 ? steps : 1));
	d2v_rng_seed(&r, 1, 2, 3);
	for (size_t i = 0; i < (size_t)B * c.channels * c.image_size * c.image_size; i++)
		img[i] = (uint8_t)d2v_rng_below(&r, 256);
	x = img;
	if (audio) {
		wave = malloc((size_t)B * S * sizeof *wave);
		for (size_t i = 0; i < (size_t)B * S; i++)
			wave[i] = (float)d2v_rng_normal(&r);
		x = wave;
	}
	for (int row = 0; row < B * c.clone; row++) {
		int idx[4096];

		for (int n = 0; n < m.N; n++)
			idx[n] = n;
		d2v_rng_shuffle_int(&r, idx, m.N);
		for (int n = 0; n < masked; n++)
			mask[(size_t)row * m.N + idx[n]] = 1;
	}
	for (int s = -warm; s < steps; s++) {
		d2v_step_out o;
		double t0 = now();

		if (d2v_model_step(&m, x, mask, NULL, NULL, NULL, B, (uint64_t)s, &o,
		    &err) < 0) {
			fprintf(stderr, "bench-step: %s\n", err.msg);
			return 1;
		}
		d2v_train_update(&m, s + warm, NULL, NULL);
		if (s >= 0)
			t[s] = (now() - t0) * 1e3;
	}
	qsort(t, (size_t)steps, sizeof *t, cmp);
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"impl\":\"d2v\",\"config\":\"%s\",\"precision\":\"%s\","
	    "\"engine\":\"%s\",\"gemm\":\"%s\",\"threads\":%d,"
	    "\"median_ms\":%.2f,\"min_ms\":%.2f,\"max_rss_mb\":%.1f,"
	    "\"params\":%zu}\n", name, bf16 ? "bf16" : "fp32",
	    !bf16 ? "sgemm" : d2v_bf16_onednn() ? "onednn" : "emulated",
	    d2v_gemm_engine(), omp_get_max_threads(), t[steps / 2], t[0],
	    ru.ru_maxrss / 1024.0, m.lay.total);
	d2v_model_free(&m);
	free(img);
	free(wave);
	free(mask);
	free(t);
	return 0;
}
