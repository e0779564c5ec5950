/* checkpoint.c - see checkpoint.h. */
#include "checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/safetensors.h"

static const char *const roles[] = {"student", "teacher", "adam_m", "adam_v"};

static float *
role_buf(const d2v_model *m, int r)
{
	return r == 0 ? m->params : r == 1 ? m->teacher : r == 2 ? m->m : m->v;
}

int
d2v_checkpoint_save(const char *path, const d2v_model *m, long step,
    const d2v_rng *rng, d2v_err *err)
{
	const d2v_layout *l = &m->lay;
	d2v_st_entry *e = calloc((size_t)l->count * 4, sizeof *e);
	json_t *cfg = d2v_config_to_json(&m->cfg), *meta;
	char *cfgs = json_dumps(cfg, JSON_COMPACT), num[32], rs[80];
	int n = 0, rc;

	json_decref(cfg);
	if (e == NULL || cfgs == NULL) {
		free(e);
		free(cfgs);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	for (int r = 0; r < 4; r++) {
		for (int i = 0; i < l->count; i++) {
			const d2v_param *p = &l->p[i];

			if (r == 1 && !p->teacher)
				continue;
			snprintf(e[n].name, sizeof e[n].name, "%s.%s", roles[r],
			    p->name);
			e[n].dtype = "F32";
			e[n].rank = p->rank;
			memcpy(e[n].shape, p->shape, sizeof p->shape);
			e[n].data = role_buf(m, r) + p->offset;
			e[n].nbytes = p->size * sizeof(float);
			n++;
		}
	}
	snprintf(num, sizeof num, "%ld", step);
	if (rng)
		snprintf(rs, sizeof rs, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64
		    "%016" PRIx64, rng->s[0], rng->s[1], rng->s[2], rng->s[3]);
	else
		rs[0] = '\0';
	meta = json_pack("{s:s,s:s,s:s,s:s,s:s}", "format", "d2v-checkpoint",
	    "config", cfgs, "step", num, "rng", rs, "d2v_version", "0.1.0");
	rc = d2v_st_save(path, meta, e, n, err);
	json_decref(meta);
	free(cfgs);
	free(e);
	return rc;
}

int
d2v_checkpoint_load(const char *path, d2v_model *m, const d2v_ops *ops,
    long *step, d2v_rng *rng, d2v_err *err)
{
	d2v_st st;
	d2v_config cfg;
	const char *cs, *ss, *rs;
	json_t *cj;
	int rc, have_teacher = 0;

	if ((rc = d2v_st_load(&st, path, err)) < 0)
		return rc;
	cs = d2v_st_meta(&st, "config");
	cj = cs ? json_loads(cs, 0, NULL) : NULL;
	if (cj == NULL) {
		d2v_st_free(&st);
		return d2v_err_set(err, D2V_EFORMAT, "%s: no model config in the "
		    "metadata (not a d2v checkpoint?)", path);
	}
	d2v_config_preset(&cfg, "base", NULL);
	rc = d2v_config_from_json(&cfg, cj, err);
	json_decref(cj);
	if (rc == 0)
		rc = d2v_model_init(m, &cfg, ops, err);
	if (rc < 0) {
		d2v_err_prefix(err, "%s", path);
		d2v_st_free(&st);
		return rc;
	}
	/* each role whole or absent: the student must be there; a missing
	 * teacher is the student, missing Adam moments are zero (a fresh
	 * optimiser); a role with some tensors and not others is refused */
	for (int r = 0; r < 4 && rc == 0; r++) {
		const char *missing = NULL, *present = NULL;

		for (int i = 0; i < m->lay.count && rc == 0; i++) {
			const d2v_param *p = &m->lay.p[i];
			char name[128];
			int64_t shape[8];
			int rank;
			size_t nb;
			const void *d;
			const float *f;

			if (r == 1 && !p->teacher)
				continue;
			snprintf(name, sizeof name, "%s.%s", roles[r], p->name);
			err->code = 0;
			d = d2v_st_get(&st, name, "F32", &rank, shape, &nb, err);
			if (d == NULL && err->code < 0) {
				rc = err->code;
				break;
			}
			if (d == NULL) {
				if (missing == NULL)
					missing = p->name;
				continue;
			}
			if (present == NULL)
				present = p->name;
			if (nb != p->size * sizeof(float) || rank != p->rank ||
			    memcmp(shape, p->shape, sizeof(int64_t) * (size_t)rank)) {
				rc = d2v_err_set(err, D2V_EMISMATCH, "%s: tensor %s "
				    "has another shape than the config says", path,
				    name);
				break;
			}
			f = d;
			for (size_t j = 0; j < p->size; j++)
				if (!isfinite(f[j])) {
					rc = d2v_err_set(err, D2V_EFORMAT, "%s: tensor %s "
					    "holds a non-finite value (%g at %zu): the "
					    "checkpoint is damaged or its run diverged",
					    path, name, (double)f[j], j);
					break;
				}
			if (rc == 0)
				memcpy(role_buf(m, r) + p->offset, d, nb);
		}
		if (rc == 0 && missing != NULL && (r == 0 || present != NULL))
			rc = d2v_err_set(err, D2V_EFORMAT, "%s: missing tensor "
			    "%s.%s%s", path, roles[r], missing, r == 0 ? "" :
			    " (the others of its kind are there: a checkpoint holds "
			    "all of a kind or none)");
		if (r == 1)
			have_teacher = present != NULL;
	}
	if (rc == 0 && !have_teacher)
		d2v_model_sync_teacher(m);
	ss = d2v_st_meta(&st, "step");
	if (rc == 0 && ss != NULL) {
		char *end;
		long v;

		errno = 0;
		v = strtol(ss, &end, 10);
		if (errno || end == ss || *end != '\0' || v < 0 ||
		    v > m->cfg.max_update)
			rc = d2v_err_set(err, D2V_EFORMAT, "%s: metadata step '%s' "
			    "is not a number of updates in [0, %ld] (the run's "
			    "max_update)", path, ss, m->cfg.max_update);
		else if (step)
			*step = v;
	} else if (step) {
		*step = 0;
	}
	m->unverified = !st.verified;
	rs = d2v_st_meta(&st, "rng");
	if (rc == 0 && rng && rs && strlen(rs) == 64) {
		for (int i = 0; i < 4; i++) {
			char w[17];

			memcpy(w, rs + 16 * i, 16);
			w[16] = '\0';
			rng->s[i] = strtoull(w, NULL, 16);
		}
	}
	d2v_st_free(&st);
	if (rc < 0)
		d2v_model_free(m);
	return rc;
}
