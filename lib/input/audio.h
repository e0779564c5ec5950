/*
 * audio.h - the audio front end: any file libsndfile reads (WAV, FLAC, Ogg
 * Vorbis and Opus, MP3...), decoded from memory, mixed down to mono,
 * resampled with libsamplerate, normalised per utterance.
 *
 * Letters: F frames and K channels of the source at its rate; T samples of
 * the mono result at the target rate (16 kHz for data2vec).
 *
 *     float *x; int64_t t;
 *     d2v_audio_decode(buf, len, 16000, D2V_RESAMPLE_MEDIUM, &x, &t, &info,
 *         &err);                               // x is (T), malloc'd
 *     d2v_audio_normalize(x, t);               // zero mean, unit variance
 *
 * Decoding from memory (sf_open_virtual) is what lets FLAC and Ogg, which
 * libsndfile cannot read from a pipe, come from anywhere.  A file whose data
 * ends before its header says it should (a WAV data chunk, a FLAC or MP3
 * frame count, an Ogg stream without its last page) is an error, not a
 * shorter clip.
 */
#ifndef D2V_INPUT_AUDIO_H
#define D2V_INPUT_AUDIO_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* libsamplerate's sinc converters. */
enum d2v_resample {
	D2V_RESAMPLE_BEST,
	D2V_RESAMPLE_MEDIUM,
	D2V_RESAMPLE_FASTEST,
};

typedef struct d2v_audio_info {
	int rate;          /* source sample rate, Hz */
	int channels;      /* K */
	int64_t frames;    /* F, as decoded */
	char format[32];   /* "WAV", "FLAC", "OGG", "MPEG"... */
} d2v_audio_info;

/*
 * Decodes buf (a whole file) to mono at rate (0 keeps the source rate) and
 * returns the samples in *out (malloc'd; *out is (T)) and their count in *t.
 * info, when not NULL, describes the source.
 */
int d2v_audio_decode(const void *buf, size_t len, int rate, int quality,
    float **out, int64_t *t, d2v_audio_info *info, d2v_err *err);

/* Resamples in (N) from rate `from` to `to` into *out (malloc'd, (M)). */
int d2v_audio_resample(const float *in, int64_t n, int from, int to,
    int quality, float **out, int64_t *m, d2v_err *err);

/* In place on x (T): (x - mean) / sqrt(var + 1e-5), population variance,
 * as fairseq's layer_norm over the whole utterance. */
void d2v_audio_normalize(float *x, int64_t t);

#endif
