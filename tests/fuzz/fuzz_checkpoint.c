/*
 * fuzz_checkpoint.c - libFuzzer target for the checkpoint reader (make
 * fuzz FUZZ=checkpoint).
 *
 * The input is a file given to d2v_st_load (header, offsets, digest), then,
 * where it parses, to the config reader and, for models of at most 64k
 * parameters, to d2v_checkpoint_load: none may crash, hang or leak, and a
 * model it accepts holds only finite values.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "model/model.h"
#include "train/checkpoint.h"
#include "train/safetensors.h"

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	char path[64];
	d2v_st st;
	d2v_err err;
	int fd = memfd_create("ck", 0);

	if (fd < 0 || write(fd, data, size) != (ssize_t)size)
		abort();
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	if (d2v_st_load(&st, path, &err) == 0) {
		const char *cs = d2v_st_meta(&st, "config");
		json_t *cj = cs ? json_loads(cs, 0, NULL) : NULL;
		d2v_config cfg;
		d2v_layout lay;
		int small = 0;

		d2v_config_preset(&cfg, "base", NULL);
		if (cj != NULL && d2v_config_from_json(&cfg, cj, &err) == 0 &&
		    d2v_config_check(&cfg, &err) == 0 &&
		    d2v_layout_init(&lay, &cfg, &err) == 0) {
			small = lay.total <= 65536 && cfg.dim <= 64 &&
			    cfg.image_size <= 64 && cfg.max_positions <= 64;
			d2v_layout_free(&lay);
		}
		json_decref(cj);
		d2v_st_free(&st);
		if (small) {
			d2v_model m;
			long step;

			if (d2v_checkpoint_load(path, &m, d2v_backend_cpu(), &step,
			    NULL, &err) == 0) {
				for (size_t i = 0; i < m.lay.total; i++)
					if (!isfinite(m.params[i]) ||
					    !isfinite(m.teacher[i]))
						abort();
				if (step < 0 || step > m.cfg.max_update)
					abort();
				d2v_model_free(&m);
			}
		}
	}
	close(fd);
	return 0;
}
