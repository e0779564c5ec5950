/*
 * gen-tokens - write a synthetic tokenized stream, shaped as d2v-tokenize
 * writes them, for the tests and benchmarks of later stages (d2v-mask).
 *
 * Usage: gen-tokens [-m image|audio|text] [-n RECORDS] [-f FIRST] [-s SEED]
 *                   [-S SIZE] [-c CHANNELS] [-T LEN[:MAX]] [-V VOCAB] [-k]
 *
 *   -m  modality (image): image x u8 [C, S, S]; audio x f32 [T] at 16 kHz;
 *       text x i32 [T], BOS first
 *   -n  records (10); -f the index of the first (0): record i has id
 *       "<modality>:<i>" and contents that depend on (seed, i) only, so
 *       `-f 5 -n 5` is the second half of `-n 10`
 *   -S  image size (224); -c channels (3)
 *   -T  audio samples or text tokens per record (16000 / 512); LEN:MAX draws
 *       each record's length uniformly from [LEN, MAX]
 *   -V  text vocabulary (1000): bos 0, pad 1, eos 2, unk 3, mask V-1
 *   -k  text: leave the mask id out of the header
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
	long n = 10, first = 0, size = 224, channels = 3, tlo = -1, thi = -1;
	long vocab = 1000;
	unsigned long seed = 1;
	int no_mask = 0, c;
	const char *mod = "image";
	d2v_writer *w;
	d2v_err err;
	json_t *h, *tok;

	while ((c = getopt(argc, argv, "m:n:f:s:S:c:T:V:k")) != -1) {
		switch (c) {
		case 'm': mod = optarg; break;
		case 'n': n = atol(optarg); break;
		case 'f': first = atol(optarg); break;
		case 's': seed = strtoul(optarg, NULL, 10); break;
		case 'S': size = atol(optarg); break;
		case 'c': channels = atol(optarg); break;
		case 'T': {
			char *colon;

			tlo = thi = atol(optarg);
			if ((colon = strchr(optarg, ':')) != NULL)
				thi = atol(colon + 1);
			break;
		}
		case 'V': vocab = atol(optarg); break;
		case 'k': no_mask = 1; break;
		default:
			fprintf(stderr, "usage: gen-tokens [-m MODALITY] [-n N] "
			    "[-f FIRST] [-s SEED] [-S SIZE] [-c C] [-T LEN[:MAX]] "
			    "[-V VOCAB] [-k]\n");
			return 2;
		}
	}
	if (tlo < 0)
		tlo = thi = strcmp(mod, "audio") == 0 ? 16000 : 512;
	h = d2v_header_new(mod);
	if (strcmp(mod, "image") == 0)
		tok = json_pack("{s:I,s:I,s:s}", "size", (json_int_t)size,
		    "channels", (json_int_t)channels, "source", "gen-tokens");
	else if (strcmp(mod, "audio") == 0)
		tok = json_pack("{s:i,s:s}", "sample_rate", 16000, "source",
		    "gen-tokens");
	else {
		tok = json_pack("{s:I,s:i,s:i,s:i,s:i,s:s}", "vocab_size",
		    (json_int_t)vocab, "bos", 0, "pad", 1, "eos", 2, "unk", 3,
		    "source", "gen-tokens");
		if (!no_mask)
			json_object_set_new(tok, "mask",
			    json_integer(vocab - 1));
	}
	d2v_header_add_stage(h, "tokenize", tok, &err);
	if (d2v_writer_open_fd(&w, 1, "stdout", &err) < 0 ||
	    d2v_writer_header(w, h, &err) < 0)
		goto fail;
	for (long i = first; i < first + n; i++) {
		int64_t shape[3];
		d2v_record rec;
		d2v_tensor t;
		d2v_rng r;
		char id[64];
		int rank;
		d2v_dtype dt;

		d2v_rng_seed(&r, seed, (uint64_t)i, 7);
		if (strcmp(mod, "image") == 0) {
			shape[0] = channels;
			shape[1] = shape[2] = size;
			rank = 3;
			dt = D2V_DTYPE_U8;
		} else {
			shape[0] = tlo + (long)d2v_rng_below(&r,
			    (uint64_t)(thi - tlo + 1));
			rank = 1;
			dt = strcmp(mod, "audio") == 0 ? D2V_DTYPE_F32 :
			    D2V_DTYPE_I32;
		}
		d2v_record_init(&rec);
		snprintf(id, sizeof id, "%s:%ld", mod, i);
		d2v_record_set_id(&rec, id, &err);
		if (d2v_tensor_init(&t, dt, rank, shape, &err) < 0)
			goto fail;
		for (int64_t k = 0; k < d2v_tensor_numel(&t); k++) {
			if (dt == D2V_DTYPE_U8)
				((uint8_t *)t.data)[k] = (uint8_t)(
				    (k * 7 + i * 13) % 256 / 2 +
				    d2v_rng_below(&r, 128));
			else if (dt == D2V_DTYPE_F32)
				((float *)t.data)[k] = (float)d2v_rng_normal(&r);
			else
				((int32_t *)t.data)[k] = k == 0 ? 0 :
				    (int32_t)(4 + d2v_rng_below(&r,
				    (uint64_t)(vocab - 5)));
		}
		d2v_record_set_tensor(&rec, "x", &t, &err);
		d2v_record_set_int(&rec, "label", i % 10, &err);
		d2v_record_set_str(&rec, "note", "passes through", &err);
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
	fprintf(stderr, "gen-tokens: %s\n", err.msg);
	return 1;
}
