/* test_tokenize_audio.c - the audio front end: WAV, FLAC, Ogg (and MP3
 * where libsndfile writes it) at 8, 22.05, 44.1 and 48 kHz, made in memory
 * with libsndfile; resampled sines keep their frequency and level, tones
 * above 8 kHz are filtered out, truncated and corrupt files fail. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sndfile.h>

#include "input/audio.h"
#include "rng.h"
#include "t.h"

/* The sanitizer build: libsndfile 1.2.0 leaks the vorbis_info of an Ogg
 * file it fails to open (tests/lsan.supp says the same for the commands). */
const char *__lsan_default_suppressions(void);
const char *
__lsan_default_suppressions(void)
{
	return "leak:vorbis_info_init\n";
}

/* ---- a growable file in memory for libsndfile to write ----------------- */

typedef struct mem {
	unsigned char *b;
	sf_count_t len, pos;
} mem;

static sf_count_t m_len(void *u) { return ((mem *)u)->len; }
static sf_count_t m_tell(void *u) { return ((mem *)u)->pos; }

static sf_count_t
m_seek(sf_count_t off, int whence, void *u)
{
	mem *m = u;
	sf_count_t p = whence == SEEK_SET ? off : whence == SEEK_CUR ?
	    m->pos + off : m->len + off;

	if (p < 0)
		return -1;
	return m->pos = p;
}

static sf_count_t
m_read(void *dst, sf_count_t n, void *u)
{
	mem *m = u;

	if (n > m->len - m->pos)
		n = m->len - m->pos;
	if (n <= 0)
		return 0;
	memcpy(dst, m->b + m->pos, (size_t)n);
	m->pos += n;
	return n;
}

static sf_count_t
m_write(const void *src, sf_count_t n, void *u)
{
	mem *m = u;

	if (m->pos + n > m->len) {
		m->b = realloc(m->b, (size_t)(m->pos + n));
		if (m->pos > m->len)
			memset(m->b + m->len, 0, (size_t)(m->pos - m->len));
		m->len = m->pos + n;
	}
	memcpy(m->b + m->pos, src, (size_t)n);
	m->pos += n;
	return n;
}

/* A file of format fmt: frames of a sine of hz at amplitude 0.5 in every
 * one of k channels; NULL when libsndfile cannot write the format. */
static mem
make_audio(int fmt, int rate, int k, long frames, double hz)
{
	SF_VIRTUAL_IO io = {m_len, m_seek, m_read, m_write, m_tell};
	SF_INFO si = {.samplerate = rate, .channels = k, .format = fmt};
	mem m = {0};
	SNDFILE *sf = sf_open_virtual(&io, SFM_WRITE, &si, &m);
	float *x;

	if (sf == NULL)
		return m;
	x = malloc((size_t)frames * k * sizeof *x);
	for (long i = 0; i < frames; i++)
		for (int j = 0; j < k; j++)
			x[i * k + j] = (float)(0.5 * sin(2 * M_PI * hz * i /
			    rate));
	sf_writef_float(sf, x, frames);
	sf_close(sf);
	free(x);
	return m;
}

/* Frequency by zero crossings over the middle of x (T) at rate. */
static double
frequency(const float *x, int64_t t, int rate)
{
	int64_t a = t / 10, b = t - t / 10, first = -1, last = -1, n = 0;

	for (int64_t i = a; i < b; i++)
		if (x[i - 1] < 0 && x[i] >= 0) {
			if (first < 0)
				first = i;
			last = i;
			n++;
		}
	return n > 1 ? (double)(n - 1) * rate / (double)(last - first) : 0;
}

static double
rms(const float *x, int64_t t)
{
	double s = 0;

	for (int64_t i = t / 10; i < t - t / 10; i++)
		s += (double)x[i] * x[i];
	return sqrt(s / (double)(t - t / 5));
}

/* ---- tests -------------------------------------------------------------- */

static const struct { const char *name; int fmt; } formats[] = {
	{"WAV", SF_FORMAT_WAV | SF_FORMAT_PCM_16},
	{"FLAC", SF_FORMAT_FLAC | SF_FORMAT_PCM_16},
	{"Ogg Vorbis", SF_FORMAT_OGG | SF_FORMAT_VORBIS},
};
static const int rates[] = {8000, 22050, 44100, 48000};

static void
test_formats_and_rates(void)
{
	for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++)
		for (size_t r = 0; r < sizeof rates / sizeof rates[0]; r++) {
			int rate = rates[r], k = r % 2 ? 2 : 1;
			long frames = rate * 3 / 2;  /* 1.5 s */
			mem m = make_audio(formats[f].fmt, rate, k, frames, 440);
			d2v_audio_info info;
			d2v_err err = {0};
			float *x;
			int64_t t, want = (int64_t)frames * 16000 / rate;
			double hz, level;
			int rc;

			rc = d2v_audio_decode(m.b, (size_t)m.len, 16000,
			    D2V_RESAMPLE_MEDIUM, &x, &t, &info, &err);
			if (rc < 0) {
				T_OK(0, "%s %d Hz: %s", formats[f].name, rate,
				    err.msg);
				free(m.b);
				continue;
			}
			hz = frequency(x, t, 16000);
			level = rms(x, t);
			T_OK(info.rate == rate && info.channels == k &&
			    llabs(t - want) <= 2 && fabs(hz - 440) < 1.0 &&
			    fabs(level - 0.5 / sqrt(2)) < 0.01,
			    "%s %d Hz %d ch -> 16 kHz: %lld samples (want "
			    "%lld), %.2f Hz, rms %.4f", formats[f].name, rate,
			    k, (long long)t, (long long)want, hz, level);
			free(x);
			free(m.b);
		}
}

static void
test_resampling(void)
{
	mem m = make_audio(SF_FORMAT_WAV | SF_FORMAT_FLOAT, 44100, 1, 44100,
	    7000);
	mem hi = make_audio(SF_FORMAT_WAV | SF_FORMAT_FLOAT, 48000, 1, 48000,
	    10000);
	float *x;
	int64_t t;

	d2v_audio_decode(m.b, (size_t)m.len, 16000, D2V_RESAMPLE_MEDIUM, &x,
	    &t, NULL, NULL);
	T_OK(fabs(frequency(x, t, 16000) - 7000) < 2, "a 7 kHz tone keeps "
	    "its frequency at 16 kHz (%.1f Hz)", frequency(x, t, 16000));
	free(x);
	d2v_audio_decode(hi.b, (size_t)hi.len, 16000, D2V_RESAMPLE_MEDIUM, &x,
	    &t, NULL, NULL);
	T_OK(rms(x, t) < 0.01, "a 10 kHz tone, above the new Nyquist, is "
	    "filtered out (rms %.5f)", rms(x, t));
	free(x);
	d2v_audio_decode(m.b, (size_t)m.len, 0, D2V_RESAMPLE_MEDIUM, &x, &t,
	    NULL, NULL);
	T_OK(t == 44100, "rate 0 keeps the source rate (%lld samples)",
	    (long long)t);
	free(x);
	free(m.b);
	free(hi.b);
}

static void
test_mixdown(void)
{
	SF_VIRTUAL_IO io = {m_len, m_seek, m_read, m_write, m_tell};
	SF_INFO si = {.samplerate = 16000, .channels = 2,
	    .format = SF_FORMAT_WAV | SF_FORMAT_FLOAT};
	mem m = {0};
	SNDFILE *sf = sf_open_virtual(&io, SFM_WRITE, &si, &m);
	float lr[2 * 100], *x;
	int64_t t;
	int ok = 1;

	for (int i = 0; i < 100; i++) {
		lr[2 * i] = 0.25f * (float)(i % 7);
		lr[2 * i + 1] = -0.125f;
	}
	sf_writef_float(sf, lr, 100);
	sf_close(sf);
	d2v_audio_decode(m.b, (size_t)m.len, 16000, 0, &x, &t, NULL, NULL);
	for (int i = 0; i < 100 && t == 100; i++)
		ok &= fabsf(x[i] - (lr[2 * i] + lr[2 * i + 1]) / 2) < 1e-6f;
	T_OK(t == 100 && ok, "stereo at 16 kHz is the exact mean of the "
	    "channels, not resampled");
	free(x);
	free(m.b);
}

static void
test_normalize(void)
{
	float x[1000];
	double s = 0, q = 0;

	for (int i = 0; i < 1000; i++)
		x[i] = 3.0f + 2.0f * (float)sin(i * 0.1);
	d2v_audio_normalize(x, 1000);
	for (int i = 0; i < 1000; i++)
		s += x[i], q += (double)x[i] * x[i];
	T_OK(fabs(s / 1000) < 1e-5 && fabs(q / 1000 - 1) < 1e-4, "normalised "
	    "to mean %.2g, variance %.6f", s / 1000, q / 1000);
}

static void
test_bad(void)
{
	static const char *const why[] = {"half", "all but 100 bytes"};
	unsigned char junk[2048];
	d2v_rng r;
	d2v_err err = {0};
	float *x;
	int64_t t;
	int rc;

	for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++) {
		mem m = make_audio(formats[f].fmt, 22050, 2, 22050 * 2, 440);

		for (int cut = 0; cut < 2; cut++) {
			size_t len = cut ? (size_t)m.len - 100 : (size_t)m.len / 2;

			rc = d2v_audio_decode(m.b, len, 16000, 0, &x, &t, NULL,
			    &err);
			/* a cut Ogg may not even open: corrupt, not truncated */
			T_OK(rc < 0 && x == NULL && (rc == D2V_ETRUNC ||
			    formats[f].fmt & SF_FORMAT_OGG), "%s cut to %s "
			    "fails: %s", formats[f].name, why[cut], err.msg);
			free(x);
		}
		rc = d2v_audio_decode(m.b, 20, 16000, 0, &x, &t, NULL, &err);
		T_OK(rc < 0 && x == NULL, "%s cut to 20 bytes fails: %s",
		    formats[f].name, err.msg);
		free(m.b);
	}
	d2v_rng_seed(&r, 3, 0, 0);
	for (size_t i = 0; i < sizeof junk; i++)
		junk[i] = (unsigned char)d2v_rng_below(&r, 256);
	rc = d2v_audio_decode(junk, sizeof junk, 16000, 0, &x, &t, NULL, &err);
	T_OK(rc == D2V_EFORMAT, "random bytes are not audio: %s", err.msg);
	rc = d2v_audio_decode(junk, 0, 16000, 0, &x, &t, NULL, &err);
	T_OK(rc == D2V_EFORMAT, "an empty file is not audio: %s", err.msg);
}

static void
test_mp3(void)
{
	mem m = make_audio(SF_FORMAT_MPEG | SF_FORMAT_MPEG_LAYER_III, 44100, 1,
	    44100 * 2, 440);
	float *x;
	int64_t t;
	d2v_err err = {0};

	if (m.b == NULL) {
		printf("skip - this libsndfile cannot write MP3\n");
		return;
	}
	if (d2v_audio_decode(m.b, (size_t)m.len, 16000, 0, &x, &t, NULL,
	    &err) < 0) {
		T_OK(0, "MP3: %s", err.msg);
	} else {
		T_OK(fabs(frequency(x, t, 16000) - 440) < 1.5 &&
		    llabs(t - 32000) < 1200, "MP3 44.1 kHz -> 16 kHz: %lld "
		    "samples, %.2f Hz", (long long)t, frequency(x, t, 16000));
		free(x);
	}
	free(m.b);
}

int
main(void)
{
	test_formats_and_rates();
	test_resampling();
	test_mixdown();
	test_normalize();
	test_bad();
	test_mp3();
	return T_DONE();
}
