/*
 * gen-media - write synthetic JPEG and audio files for the d2v-tokenize
 * tests and benchmarks (inputs are made at test time, never stored).
 *
 * Usage:
 *   gen-media jpeg OUT W H [-q QUALITY] [-s 444|422|420|440|411|gray|cmyk]
 *                          [-p ramp|photo] [-r SEED]
 *   gen-media audio OUT RATE FRAMES [-f wav|flac|ogg|opus|mp3] [-c CHANNELS]
 *                          [-F HZ]
 *
 * ramp: R = x * 255 / (W - 1), G = y * 255 / (H - 1), B = (R + G) / 2 (grey:
 * R), so a test can recompute what any crop must hold.  photo: smooth
 * shapes, edges and noise, about as costly to decode as a photograph.
 * audio: a sine of HZ (440) at amplitude 0.5 in every channel.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sndfile.h>
#include <turbojpeg.h>

#include "rng.h"

static void
usage(void)
{
	fprintf(stderr, "usage: gen-media jpeg OUT W H [-q Q] [-s SUBSAMP] "
	    "[-p ramp|photo] [-r SEED]\n"
	    "       gen-media audio OUT RATE FRAMES [-f FORMAT] [-c K] "
	    "[-F HZ]\n");
	exit(2);
}

/* px is (H, W, 3) */
static void
paint_ramp(uint8_t *px, int w, int h)
{
	for (int y = 0; y < h; y++)
		for (int x = 0; x < w; x++) {
			uint8_t *p = px + ((size_t)y * w + x) * 3;
			int r = w > 1 ? x * 255 / (w - 1) : 0;
			int g = h > 1 ? y * 255 / (h - 1) : 0;

			p[0] = (uint8_t)r;
			p[1] = (uint8_t)g;
			p[2] = (uint8_t)((r + g) / 2);
		}
}

/* px is (H, W, 3) */
static void
paint_photo(uint8_t *px, int w, int h, unsigned long seed)
{
	d2v_rng r;
	double cx[6], cy[6], rad[6], col[6][3];

	d2v_rng_seed(&r, seed, 0, 0);
	for (int k = 0; k < 6; k++) {
		cx[k] = d2v_rng_uniform(&r) * w;
		cy[k] = d2v_rng_uniform(&r) * h;
		rad[k] = (0.1 + 0.3 * d2v_rng_uniform(&r)) * (w < h ? w : h);
		for (int c = 0; c < 3; c++)
			col[k][c] = 255 * d2v_rng_uniform(&r);
	}
	for (int y = 0; y < h; y++)
		for (int x = 0; x < w; x++) {
			uint8_t *p = px + ((size_t)y * w + x) * 3;
			double v[3];

			for (int c = 0; c < 3; c++)
				v[c] = 60 + 50 * sin(x * 0.02 * (c + 1) +
				    y * 0.013);
			for (int k = 0; k < 6; k++)
				if (hypot(x - cx[k], y - cy[k]) < rad[k])
					for (int c = 0; c < 3; c++)
						v[c] = 0.3 * v[c] + 0.7 *
						    col[k][c];
			for (int c = 0; c < 3; c++) {
				double n = v[c] + 24 * (d2v_rng_uniform(&r) -
				    0.5);

				p[c] = (uint8_t)(n < 0 ? 0 : n > 255 ? 255 : n);
			}
		}
}

static int
write_file(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");

	if (f == NULL || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		return 1;
	}
	return 0;
}

static int
gen_jpeg(int argc, char **argv)
{
	const char *out = argv[2], *sub = "420", *pattern = "ramp";
	int w = atoi(argv[3]), h = atoi(argv[4]), q = 95, c, rc, ss, pf, ch;
	unsigned long seed = 1, len = 0;
	uint8_t *px, *src, *jpg = NULL;
	tjhandle tj;

	optind = 5;
	while ((c = getopt(argc, argv, "q:s:p:r:")) != -1) {
		switch (c) {
		case 'q': q = atoi(optarg); break;
		case 's': sub = optarg; break;
		case 'p': pattern = optarg; break;
		case 'r': seed = strtoul(optarg, NULL, 10); break;
		default: usage();
		}
	}
	if (w < 1 || h < 1)
		usage();
	ss = !strcmp(sub, "444") ? TJSAMP_444 : !strcmp(sub, "422") ?
	    TJSAMP_422 : !strcmp(sub, "440") ? TJSAMP_440 :
	    !strcmp(sub, "411") ? TJSAMP_411 : !strcmp(sub, "gray") ?
	    TJSAMP_GRAY : TJSAMP_420;
	pf = !strcmp(sub, "gray") ? TJPF_GRAY : !strcmp(sub, "cmyk") ?
	    TJPF_CMYK : TJPF_RGB;
	ch = pf == TJPF_GRAY ? 1 : pf == TJPF_CMYK ? 4 : 3;
	px = malloc((size_t)w * h * 3);
	src = malloc((size_t)w * h * 4);
	if (strcmp(pattern, "photo") == 0)
		paint_photo(px, w, h, seed);
	else
		paint_ramp(px, w, h);
	for (size_t i = 0; i < (size_t)w * h; i++)
		for (int k = 0; k < ch; k++)  /* CMYK: inverted inks, K = 255 */
			src[i * ch + k] = k < 3 ? px[i * 3 + k] : 255;
	tj = tjInitCompress();
	rc = tjCompress2(tj, src, w, 0, h, pf, &jpg, &len,
	    pf == TJPF_CMYK ? TJSAMP_444 : ss, q, 0);
	if (rc != 0)
		fprintf(stderr, "gen-media: %s\n", tjGetErrorStr2(tj));
	else
		rc = write_file(out, jpg, len);
	tjFree(jpg);
	tjDestroy(tj);
	free(px);
	free(src);
	return rc != 0;
}

static int
gen_audio(int argc, char **argv)
{
	const char *out = argv[2], *fmt = "wav";
	int rate = atoi(argv[3]), k = 1, c;
	long frames = atol(argv[4]);
	double hz = 440;
	SF_INFO si = {0};
	SNDFILE *sf;
	float *x;

	optind = 5;
	while ((c = getopt(argc, argv, "f:c:F:")) != -1) {
		switch (c) {
		case 'f': fmt = optarg; break;
		case 'c': k = atoi(optarg); break;
		case 'F': hz = atof(optarg); break;
		default: usage();
		}
	}
	if (rate < 1 || frames < 0 || k < 1)
		usage();
	si.samplerate = rate;
	si.channels = k;
	si.format = !strcmp(fmt, "flac") ? SF_FORMAT_FLAC | SF_FORMAT_PCM_16 :
	    !strcmp(fmt, "ogg") ? SF_FORMAT_OGG | SF_FORMAT_VORBIS :
	    !strcmp(fmt, "opus") ? SF_FORMAT_OGG | SF_FORMAT_OPUS :
	    !strcmp(fmt, "mp3") ? SF_FORMAT_MPEG | SF_FORMAT_MPEG_LAYER_III :
	    SF_FORMAT_WAV | SF_FORMAT_PCM_16;
	if ((sf = sf_open(out, SFM_WRITE, &si)) == NULL) {
		fprintf(stderr, "gen-media: %s: %s\n", out, sf_strerror(NULL));
		return 1;
	}
	x = malloc((size_t)(frames ? frames : 1) * k * sizeof *x);
	for (long i = 0; i < frames; i++)
		for (int j = 0; j < k; j++)
			x[i * k + j] = (float)(0.5 * sin(2 * M_PI * hz * i /
			    rate));
	if (sf_writef_float(sf, x, frames) != frames) {
		fprintf(stderr, "gen-media: %s: %s\n", out, sf_strerror(sf));
		sf_close(sf);
		free(x);
		return 1;
	}
	free(x);
	return sf_close(sf) != 0;
}

int
main(int argc, char **argv)
{
	if (argc >= 5 && strcmp(argv[1], "jpeg") == 0)
		return gen_jpeg(argc, argv);
	if (argc >= 5 && strcmp(argv[1], "audio") == 0)
		return gen_audio(argc, argv);
	usage();
}
