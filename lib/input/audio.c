/* audio.c - libsndfile from memory, libsamplerate; see audio.h. */
#include "input/audio.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <samplerate.h>
#include <sndfile.h>

#include "tensor.h"

#define CHUNK 16384  /* frames per sf_readf_float */

static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- a file in memory as libsndfile's virtual I/O ------------------- */

typedef struct membuf {
	const unsigned char *buf;
	sf_count_t len, pos;
} membuf;

static sf_count_t
mem_len(void *u)
{
	return ((membuf *)u)->len;
}

static sf_count_t
mem_seek(sf_count_t off, int whence, void *u)
{
	membuf *m = u;
	sf_count_t p = whence == SEEK_SET ? off :
	    whence == SEEK_CUR ? m->pos + off : m->len + off;

	if (p < 0 || p > m->len)
		return -1;
	return m->pos = p;
}

static sf_count_t
mem_read(void *dst, sf_count_t n, void *u)
{
	membuf *m = u;

	if (n > m->len - m->pos)
		n = m->len - m->pos;
	if (n > 0)
		memcpy(dst, m->buf + m->pos, (size_t)n);
	m->pos += n;
	return n;
}

static sf_count_t
mem_write(const void *src, sf_count_t n, void *u)
{
	(void)src;
	(void)n;
	(void)u;
	return 0;
}

static sf_count_t
mem_tell(void *u)
{
	return ((membuf *)u)->pos;
}

/* ---- decoding ------------------------------------------------------- */

/* 1 when libsndfile's log says a WAV data chunk (or an AIFF SSND chunk)
 * claims more bytes than the file has. */
static int
chunk_short(SNDFILE *sf)
{
	char log[4096], *p;

	if (sf_command(sf, SFC_GET_LOG_INFO, log, sizeof log) <= 0)
		return 0;
	for (p = log; (p = strstr(p, "(should be ")) != NULL; p++) {
		char *line = p;
		unsigned long long said, real;

		while (line > log && line[-1] != '\n')
			line--;
		if (strncmp(line, "data", 4) != 0 &&
		    strncmp(line, "SSND", 4) != 0)
			continue;
		if (sscanf(strchr(line, ':') ? strchr(line, ':') + 1 : line,
		    "%llu (should be %llu", &said, &real) == 2 &&
		    said > real && said != 0xffffffffull && said != 0)
			return 1;
	}
	return 0;
}

static void
format_name(int format, char *buf, size_t size)
{
	SF_FORMAT_INFO fi = {.format = format & SF_FORMAT_TYPEMASK};

	if (sf_command(NULL, SFC_GET_FORMAT_MAJOR, &fi, sizeof fi) == 0 &&
	    fi.extension != NULL)
		snprintf(buf, size, "%s", fi.extension);
	else
		snprintf(buf, size, "0x%x", (unsigned)format);
}

/* Reads every frame of sf, mixed down to mono, into *out ((F), malloc'd). */
static int
read_mono(SNDFILE *sf, const SF_INFO *si, float **out, int64_t *frames,
    d2v_err *err)
{
	int k = si->channels;
	int64_t cap = 0, n = 0, limit = (int64_t)(d2v_tensor_limit() / 4);
	float *buf = malloc((size_t)CHUNK * k * sizeof *buf), *x = NULL;
	sf_count_t got;

	if (buf == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	while ((got = sf_readf_float(sf, buf, CHUNK)) > 0) {
		if (n + got > cap) {
			float *p;

			cap = cap ? 2 * cap : 8 * CHUNK;
			if (n + got > limit ||
			    (p = realloc(x, (size_t)cap * sizeof *x)) == NULL) {
				free(buf);
				free(x);
				return d2v_err_set(err, n + got > limit ?
				    D2V_ELIMIT : D2V_ENOMEM, "more than %lld "
				    "samples (D2V_MAX_TENSOR)", (long long)limit);
			}
			x = p;
		}
		for (sf_count_t i = 0; i < got; i++) {
			float s = 0;

			for (int c = 0; c < k; c++) {
				float v = buf[i * k + c];

				/* NaN, infinity, or the huge values of integer
				 * data read as float: not a sound */
				if (!isfinite(v) || fabsf(v) > 1e6f) {
					free(buf);
					free(x);
					return d2v_err_set(err, D2V_EFORMAT, "sample %lld "
					    "of channel %d is %g: not audio (a damaged "
					    "file, or integer data labelled as float?)",
					    (long long)(n + i), c, (double)v);
				}
				s += v;
			}
			x[n + i] = s / (float)k;
		}
		n += got;
	}
	free(buf);
	*out = x;
	*frames = n;
	return 0;
}

/* Checks that sf gave every frame its header promised. */
static int
check_complete(SNDFILE *sf, const SF_INFO *si, int64_t n, d2v_err *err)
{
	int mpeg = (si->format & SF_FORMAT_TYPEMASK) == SF_FORMAT_MPEG;

	if (sf_error(sf) != SF_ERR_NO_ERROR)
		return d2v_err_set(err, D2V_EFORMAT, "decode error after %lld "
		    "frames: %s", (long long)n, sf_strerror(sf));
	if (si->frames == SF_COUNT_MAX)
		return d2v_err_set(err, D2V_ETRUNC, "truncated or damaged: "
		    "the stream has no end (%lld frames read)", (long long)n);
	if (n < si->frames - (mpeg ? si->frames / 100 : 0))
		return d2v_err_set(err, D2V_ETRUNC, "truncated: %lld of %lld "
		    "frames", (long long)n, (long long)si->frames);
	if (chunk_short(sf))
		return d2v_err_set(err, D2V_ETRUNC, "truncated: the data chunk "
		    "ends early, after %lld frames", (long long)n);
	if (n == 0)
		return d2v_err_set(err, D2V_EFORMAT, "no audio frames");
	return 0;
}

int
d2v_audio_decode(const void *buf, size_t len, int rate, int quality,
    float **out, int64_t *t, d2v_audio_info *info, d2v_err *err)
{
	SF_VIRTUAL_IO io = {mem_len, mem_seek, mem_read, mem_write, mem_tell};
	membuf m = {buf, (sf_count_t)len, 0};
	SF_INFO si = {0};
	SNDFILE *sf;
	float *x = NULL;
	int64_t n = 0;
	int rc;

	*out = NULL;
	*t = 0;
	/* libsndfile keeps the error of a failed open in a global */
	pthread_mutex_lock(&open_mu);
	if ((sf = sf_open_virtual(&io, SFM_READ, &si, &m)) == NULL) {
		const char *why = sf_strerror(NULL);

		if (strstr(why, "SF_INFO") != NULL)
			d2v_err_set(err, D2V_EFORMAT, "not an audio file: its header "
			    "is incomplete or invalid (a sample rate or channel "
			    "count of 0?)");
		else
			d2v_err_set(err, D2V_EFORMAT, "not an audio file: %s", why);
	}
	pthread_mutex_unlock(&open_mu);
	if (sf == NULL)
		return D2V_EFORMAT;
	if (si.channels < 1 || si.samplerate < 1) {
		sf_close(sf);
		return d2v_err_set(err, D2V_EFORMAT, "%d channels at %d Hz",
		    si.channels, si.samplerate);
	}
	rc = read_mono(sf, &si, &x, &n, err);
	if (rc == 0)
		rc = check_complete(sf, &si, n, err);
	if (info != NULL) {
		info->rate = si.samplerate;
		info->channels = si.channels;
		info->frames = n;
		format_name(si.format, info->format, sizeof info->format);
	}
	sf_close(sf);
	if (rc == 0 && rate > 0 && rate != si.samplerate) {
		float *y;

		rc = d2v_audio_resample(x, n, si.samplerate, rate, quality, &y,
		    &n, err);
		free(x);
		x = rc == 0 ? y : NULL;
	}
	if (rc < 0) {
		free(x);
		return rc;
	}
	*out = x;
	*t = n;
	return 0;
}

int
d2v_audio_resample(const float *in, int64_t n, int from, int to,
    int quality, float **out, int64_t *m, d2v_err *err)
{
	static const int conv[] = {SRC_SINC_BEST_QUALITY,
	    SRC_SINC_MEDIUM_QUALITY, SRC_SINC_FASTEST};
	double ratio = (double)to / from;
	long cap = (long)ceil(n * ratio) + 64;
	SRC_DATA d = {0};
	int rc;

	*out = NULL;
	*m = 0;
	if (ratio > 256 || ratio < 1.0 / 256 || quality < 0 || quality > 2)
		return d2v_err_set(err, D2V_EINVAL, "cannot resample %d Hz to "
		    "%d Hz", from, to);
	if ((d.data_out = malloc((size_t)cap * sizeof(float))) == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	d.data_in = in;
	d.input_frames = (long)n;
	d.output_frames = cap;
	d.src_ratio = ratio;
	d.end_of_input = 1;
	if ((rc = src_simple(&d, conv[quality], 1)) != 0) {
		free(d.data_out);
		return d2v_err_set(err, D2V_EINVAL, "resample %d Hz to %d Hz: "
		    "%s", from, to, src_strerror(rc));
	}
	*out = d.data_out;
	*m = d.output_frames_gen;
	return 0;
}

void
d2v_audio_normalize(float *x, int64_t t)
{
	double sum = 0, sq = 0, mean, rstd;

	for (int64_t i = 0; i < t; i++)
		sum += x[i];
	mean = t > 0 ? sum / t : 0;
	for (int64_t i = 0; i < t; i++)
		sq += (x[i] - mean) * (x[i] - mean);
	rstd = 1.0 / sqrt((t > 0 ? sq / t : 0) + 1e-5);
	for (int64_t i = 0; i < t; i++)
		x[i] = (float)((x[i] - mean) * rstd);
}
