/*
 * gen-stream - write a synthetic d2v stream for tests and benchmarks.
 *
 * Usage: gen-stream [-n RECORDS] [-b BYTES_PER_RECORD] [-s SEED] [-m MODALITY]
 *
 * Records cycle through every dtype and ranks 0..8 (tensor "x"), carry a
 * "label" and, with -b, an f32 tensor "big" of about that many bytes.  The
 * values are a deterministic function of the seed, so the Python side can
 * recompute them (tests/stream.sh).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rng.h"
#include "stream.h"

int
main(int argc, char **argv)
{
	long n = 20, big = 0;
	unsigned long seed = 1;
	const char *modality = "image";
	d2v_writer *w;
	d2v_err err;
	json_t *h;
	int c;

	while ((c = getopt(argc, argv, "n:b:s:m:")) != -1) {
		switch (c) {
		case 'n': n = atol(optarg); break;
		case 'b': big = atol(optarg); break;
		case 's': seed = strtoul(optarg, NULL, 10); break;
		case 'm': modality = optarg; break;
		default:
			fprintf(stderr, "usage: gen-stream [-n N] [-b BYTES] "
			    "[-s SEED] [-m MODALITY]\n");
			return 2;
		}
	}
	h = d2v_header_new(modality);
	d2v_header_add_stage(h, "gen", json_pack("{s:I,s:s,s:f}", "seed",
	    (json_int_t)seed, "what", "synthetic", "scale", 0.5), &err);
	if (d2v_writer_open_fd(&w, 1, "stdout", &err) < 0 ||
	    d2v_writer_header(w, h, &err) < 0)
		goto fail;
	for (long i = 0; i < n; i++) {
		d2v_dtype dt = (d2v_dtype)(i % D2V_DTYPE_COUNT);
		int rank = (int)(i % (D2V_MAX_RANK + 1));
		int64_t shape[D2V_MAX_RANK];
		d2v_record rec;
		d2v_tensor t;
		d2v_rng r;
		char id[64];

		for (int d = 0; d < rank; d++)
			shape[d] = 1 + (i + d) % 3;
		d2v_record_init(&rec);
		snprintf(id, sizeof id, "gen:%ld", i);
		d2v_record_set_id(&rec, id, &err);
		if (d2v_tensor_init(&t, dt, rank, shape, &err) < 0)
			goto fail;
		d2v_rng_seed(&r, seed, (uint64_t)i, 0);
		for (int64_t k = 0; k < d2v_tensor_numel(&t); k++) {
			double v = d2v_rng_uniform(&r) * 200.0 - 100.0;

			switch (dt) {
			case D2V_DTYPE_U8: ((uint8_t *)t.data)[k] = (uint8_t)(v + 100); break;
			case D2V_DTYPE_I32: ((int32_t *)t.data)[k] = (int32_t)(v * 1000); break;
			case D2V_DTYPE_I64: ((int64_t *)t.data)[k] = (int64_t)(v * 1e12); break;
			case D2V_DTYPE_F16: ((uint16_t *)t.data)[k] = d2v_f32_to_f16((float)v); break;
			case D2V_DTYPE_BF16: ((uint16_t *)t.data)[k] = d2v_f32_to_bf16((float)v); break;
			case D2V_DTYPE_F32: ((float *)t.data)[k] = (float)v; break;
			default: break;
			}
		}
		d2v_record_set_tensor(&rec, "x", &t, &err);
		d2v_record_set_int(&rec, "label", i % 10, &err);
		if (big > 0) {
			int64_t s = big / 4;

			if (d2v_tensor_init(&t, D2V_DTYPE_F32, 1, &s, &err) < 0)
				goto fail;
			for (int64_t k = 0; k < s; k++)
				((float *)t.data)[k] = (float)(k % 1000) * 0.001f;
			d2v_record_set_tensor(&rec, "big", &t, &err);
		}
		if (d2v_writer_record(w, &rec, &err) < 0)
			goto fail;
		d2v_record_clear(&rec);
	}
	if (d2v_writer_end(w, &err) < 0)
		goto fail;
	d2v_writer_free(w);
	json_decref(h);
	return 0;
fail:
	fprintf(stderr, "gen-stream: %s\n", err.msg);
	return 1;
}
