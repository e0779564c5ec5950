/* optim.c - see optim.h. */
#include "optim.h"

#include <math.h>
#include <string.h>

/* fairseq tri_stage: warmup from init_lr_scale lr to lr, hold, then an
 * exponential decay to final_lr_scale lr over the remaining updates. */
static double
tri_stage(const d2v_config *c, long k)
{
	double peak = c->lr, init = c->init_lr_scale * peak;
	double final = c->final_lr_scale * peak;
	long decay = c->max_update - c->warmup - c->hold;

	if (k < c->warmup)
		return init + (peak - init) * (double)k / (double)c->warmup;
	if (k < c->warmup + c->hold)
		return peak;
	if (decay > 0 && k <= c->warmup + c->hold + decay)
		return peak * exp(log(c->final_lr_scale) / (double)decay *
		    (double)(k - c->warmup - c->hold));
	return final;
}

double
d2v_lr(const d2v_config *c, long k)
{
	if (strcmp(c->lr_schedule, "tri_stage") == 0)
		return tri_stage(c, k);
	if (k < c->warmup)
		return c->min_lr + (c->lr - c->min_lr) * (double)k / (double)c->warmup;
	if (c->max_update <= c->warmup)
		return c->lr;
	{
		double period = (double)(c->max_update - c->warmup);
		double cur = (double)(k - c->warmup);
		long i = (long)floor(cur / period);
		double tcur = cur - period * (double)i;
		double shrink = pow(0.1, (double)i); /* fairseq lr_shrink */

		return c->min_lr * shrink + 0.5 * (c->lr - c->min_lr) * shrink *
		    (1 + cos(M_PI * tcur / period));
	}
}

double
d2v_tau(const d2v_config *c, long t)
{
	double r;

	if (t >= c->ema_anneal_end_step)
		return c->ema_end_decay;
	r = 1.0 - (double)t / (double)c->ema_anneal_end_step;
	return c->ema_end_decay - (c->ema_end_decay - c->ema_decay) * r;
}

double
d2v_clip_grads(const d2v_ops *o, float *g, size_t n, double max)
{
	double norm = sqrt(o->sumsq(g, n));

	if (max > 0 && norm > max)
		o->scale(g, n, (float)(max / (norm + 1e-6)));
	return norm;
}

void
d2v_adam_step(const d2v_ops *o, const d2v_layout *l, const d2v_config *c,
    float *p, const float *g, float *m, float *v, double lr, long t)
{
	double b1 = c->beta1, b2 = c->beta2;
	double step = lr * sqrt(1 - pow(b2, (double)t)) / (1 - pow(b1, (double)t));

	for (int i = 0; i < l->count; i++) {
		const d2v_param *e = &l->p[i];
		float decay = e->decay ? (float)(lr * c->weight_decay) : 0.0f;
		size_t k = e->offset, n = e->size;

		/* the run of parameters that follow with the same decay: one
		 * call (the layout's entries are contiguous) */
		while (i + 1 < l->count && l->p[i + 1].decay == e->decay &&
		    l->p[i + 1].offset == k + n)
			n += l->p[++i].size;
		o->adamw(p + k, g + k, m + k, v + k, n, b1, b2, step, c->eps,
		    decay);
	}
}

void
d2v_ema_step(const d2v_ops *o, float *teacher, const float *student,
    size_t n, double tau)
{
	if (tau >= 1)
		return;
	o->ema(teacher, student, n, tau);
}

double
d2v_train_update(d2v_model *m, long k, double *lr_out, double *tau_out)
{
	const d2v_config *c = &m->cfg;
	double lr = d2v_lr(c, k), tau = d2v_tau(c, k + 1);
	double norm = d2v_clip_grads(m->ops, m->grads, m->lay.total,
	    c->clip_norm);

	d2v_adam_step(m->ops, &m->lay, c, m->params, m->grads, m->m, m->v, lr,
	    k + 1);
	/* shared parameters are copied, the teacher's own averaged (§5.2) */
	memcpy(m->teacher, m->params, m->lay.teacher_begin * sizeof(float));
	d2v_ema_step(m->ops, m->teacher + m->lay.teacher_begin,
	    m->params + m->lay.teacher_begin,
	    m->lay.teacher_end - m->lay.teacher_begin, tau);
	if (lr_out)
		*lr_out = lr;
	if (tau_out)
		*tau_out = tau;
	return norm;
}
