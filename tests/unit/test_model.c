/* test_model.c - the whole v2 image model: finite differences on every
 * parameter tensor, schedules, checkpoint round trip. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "rng.h"
#include "t.h"
#include "train/checkpoint.h"
#include "train/optim.h"

static d2v_config
tiny(void)
{
	d2v_config c;

	d2v_config_preset(&c, "tiny", NULL);
	c.image_size = 12; c.patch = 3; c.channels = 2;
	c.dim = 16; c.heads = 2; c.mlp_dim = 24;
	c.prenet_depth = 1; c.depth = 2; c.top_k = 2;
	c.decoder_dim = 8; c.decoder_layers = 2; c.decoder_groups = 2;
	c.clone = 2;
	c.cls_loss = 0.3; /* larger than the recipe's so the CLS path shows */
	c.mean[1] = 0.5; c.std[1] = 0.3;
	return c;
}

/* B=2 images, M=2 copies, 16 tokens, 10 masked per row. */
static void
inputs(uint8_t *img, uint8_t *mask, float *noise, const d2v_model *m)
{
	d2v_rng r;
	int N = m->N;

	d2v_rng_seed(&r, 5, 0, 0);
	for (int i = 0; i < 2 * 2 * 12 * 12; i++)
		img[i] = (uint8_t)((i * 7 + (i / 12) * 13) % 256 ^ (int)d2v_rng_below(&r, 32));
	for (int row = 0; row < 4; row++) {
		int idx[16];

		for (int n = 0; n < N; n++)
			idx[n] = n;
		d2v_rng_shuffle_int(&r, idx, N);
		for (int n = 0; n < N; n++)
			mask[row * N + idx[n]] = n < 10;
	}
	for (int i = 0; i < 4 * N * m->D; i++)
		noise[i] = (float)(0.01 * d2v_rng_normal(&r));
}

static void
test_gradients(const char *what, double drop)
{
	d2v_config c = tiny();
	d2v_model m;
	d2v_err err;
	d2v_step_out out;
	uint8_t img[576], mask[64];
	float *noise = malloc(4 * 16 * 16 * sizeof(float)), *g;
	d2v_rng r;
	int bad = 0, checked = 0, rc;

	c.encoder_dropout = c.attention_dropout = c.activation_dropout = drop;
	c.post_mlp_drop = drop;
	c.drop_path = drop > 0 ? 0.4 : 0;
	rc = d2v_model_init(&m, &c, d2v_backend_cpu(), &err);
	T_OK(rc == 0, "tiny model initialises (%s)", rc ? err.msg : "ok");
	if (rc)
		return;
	d2v_params_init(&m.lay, &c, m.params, 11);
	/* widen LayerNorm weights and biases away from 1 and 0 */
	d2v_rng_seed(&r, 3, 0, 0);
	for (size_t i = 0; i < m.lay.total; i++)
		m.params[i] += (float)(0.05 * d2v_rng_normal(&r));
	d2v_model_sync_teacher(&m);
	inputs(img, mask, noise, &m);
	rc = d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 1, &out, &err);
	T_OK(rc == 0 && isfinite(out.loss) && out.loss > 0,
	    "a step gives a finite loss %.6f (reg %.6f, cls %.6f)", out.loss,
	    out.loss_reg, out.loss_cls);
	T_OK(out.n_masked == 40, "40 masked tokens counted");
	g = malloc(m.lay.total * sizeof(float));
	memcpy(g, m.grads, m.lay.total * sizeof(float));
	for (int i = 0; i < m.lay.count; i++) {
		const d2v_param *p = &m.lay.p[i];
		double worst = 0;

		for (int k = 0; k < 3; k++) {
			size_t j = p->offset + (size_t)d2v_rng_below(&r, p->size);
			float save = m.params[j];
			double h = 1e-2, lp, lm, num, e;
			d2v_step_out o2;

			m.params[j] = save + (float)h;
			d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 1, &o2, &err);
			lp = o2.loss;
			m.params[j] = save - (float)h;
			d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 1, &o2, &err);
			lm = o2.loss;
			m.params[j] = save;
			num = (lp - lm) / (2 * h);
			e = fabs(num - g[j]) / (fabs(num) + fabs(g[j]) + 1e-3);
			if (e > worst)
				worst = e;
			checked++;
		}
		if (worst > 0.03) {
			bad++;
			printf("# %s: worst relative error %.3g\n", p->name, worst);
		}
	}
	T_OK(bad == 0, "%s: finite differences agree on all %d parameter "
	    "tensors (%d coordinates)", what, m.lay.count, checked);
	if (drop > 0) {
		d2v_step_out o3;
		float *t1 = malloc(4 * 16 * sizeof(float));

		/* the teacher's targets never see dropout */
		d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 1, &o3, &err);
		memcpy(t1, m.y, 4 * 16 * sizeof(float));
		d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 99, &o3, &err);
		T_OK(memcmp(t1, m.y, 4 * 16 * sizeof(float)) == 0 &&
		    fabs(o3.loss - out.loss) > 1e-6,
		    "dropout changes the student's loss with the step seed, never "
		    "the targets");
		free(t1);
	}
	free(g);
	free(noise);
	d2v_model_free(&m);
}

static void
test_unequal_mask(void)
{
	d2v_config c = tiny();
	d2v_model m;
	d2v_err err;
	d2v_step_out out;
	uint8_t img[576] = {0}, mask[64] = {0};

	d2v_model_init(&m, &c, d2v_backend_cpu(), &err);
	for (int row = 0; row < 4; row++)
		for (int n = 0; n < 8 + (row == 2); n++)
			mask[row * 16 + n] = 1;
	T_OK(d2v_model_step(&m, img, mask, NULL, NULL, NULL, 2, 1, &out, &err) == D2V_EINVAL &&
	    strstr(err.msg, "row 2"), "rows with unequal counts are refused: %s",
	    err.msg);
	d2v_model_free(&m);
}

static void
test_schedules(void)
{
	d2v_config c = tiny();

	c.lr = 1e-3; c.min_lr = 0; c.warmup = 10; c.max_update = 110;
	c.ema_decay = 0.9998; c.ema_end_decay = 0.99999; c.ema_anneal_end_step = 100;
	T_OK(d2v_lr(&c, 0) == 0 && fabs(d2v_lr(&c, 5) - 5e-4) < 1e-12 &&
	    fabs(d2v_lr(&c, 10) - 1e-3) < 1e-12 && fabs(d2v_lr(&c, 60) - 5e-4) < 1e-12,
	    "cosine: 0 at step 0, linear warmup, peak, half-way at the middle");
	T_OK(fabs(d2v_tau(&c, 0) - 0.9998) < 1e-12 &&
	    fabs(d2v_tau(&c, 50) - (0.99999 - 0.00019 * 0.5)) < 1e-12 &&
	    d2v_tau(&c, 100) == 0.99999 && d2v_tau(&c, 1000) == 0.99999,
	    "tau anneals linearly, then stays at the end value");
	{
		float g[3] = {3, 4, 0};
		double n = d2v_clip_grads(g, 3, 1.0);

		T_OK(n == 5 && fabs(g[0] - 0.6f) < 1e-6 && fabs(g[1] - 0.8f) < 1e-6,
		    "clipping returns the norm and rescales to the limit");
	}
}

static void
test_checkpoint(void)
{
	d2v_config c = tiny();
	d2v_model m, m2;
	d2v_err err;
	d2v_rng r, r2;
	long step = 0;
	char path[] = "/tmp/d2v-ck-XXXXXX";
	int fd = mkstemp(path), same;

	close(fd);
	d2v_model_init(&m, &c, d2v_backend_cpu(), &err);
	d2v_params_init(&m.lay, &c, m.params, 2);
	for (size_t i = 0; i < m.lay.total; i++) {
		m.teacher[i] = m.params[i] * 0.5f;
		m.m[i] = (float)i;
		m.v[i] = 1.0f / (float)(i + 1);
	}
	d2v_rng_seed(&r, 77, 1, 2);
	T_OK(d2v_checkpoint_save(path, &m, 1234, &r, &err) == 0,
	    "checkpoint saves");
	T_OK(d2v_checkpoint_load(path, &m2, d2v_backend_cpu(), &step, &r2, &err) == 0,
	    "checkpoint loads (%s)", err.code ? err.msg : "ok");
	same = step == 1234 && memcmp(&r, &r2, sizeof r) == 0 &&
	    m2.lay.total == m.lay.total &&
	    !memcmp(m.params, m2.params, m.lay.total * 4) &&
	    !memcmp(m.teacher, m2.teacher, m.lay.teacher_end * 4) &&
	    !memcmp(m.m, m2.m, m.lay.total * 4) && !memcmp(m.v, m2.v, m.lay.total * 4) &&
	    m2.cfg.dim == 16 && m2.cfg.decoder_groups == 2 && m2.cfg.mean[1] == 0.5;
	T_OK(same, "every buffer, the step, the RNG and the config round-trip");
	d2v_model_free(&m2);
	T_OK(d2v_checkpoint_save("/nonexistent-dir/ck.safetensors", &m, 1, &r,
	    &err) == D2V_EIO, "a checkpoint in a missing directory fails: %s",
	    err.msg);
	unlink(path);
	d2v_model_free(&m);
}

int
main(void)
{
	test_gradients("no dropout", 0);
	test_gradients("dropout 0.2 everywhere, drop path 0.4", 0.2);
	test_unequal_mask();
	test_schedules();
	test_checkpoint();
	return T_DONE();
}
