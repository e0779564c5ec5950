/*
 * checkpoint.h - training state as a safetensors file.
 *
 * Tensors: student.<name>, teacher.<name> (teacher parameters only),
 * adam_m.<name>, adam_v.<name>, all f32 with PyTorch names and shapes.
 * __metadata__: "format" = "d2v-checkpoint", "config" (the JSON of
 * d2v_config), "step" (updates done), "rng" (the trainer's generator state,
 * four hex words), "d2v_version".  Written atomically; a checkpoint alone is
 * enough to resume, to run the teacher or to evaluate.
 */
#ifndef D2V_CHECKPOINT_H
#define D2V_CHECKPOINT_H

#include "model/model.h"
#include "rng.h"

int d2v_checkpoint_save(const char *path, const d2v_model *m, long step,
    const d2v_rng *rng, d2v_err *err);
/* Initialises m (uninitialised) from the checkpoint's config and fills every
 * buffer present: a file with only student.* gives teacher = student and
 * zero Adam moments.  step and rng may be NULL. */
int d2v_checkpoint_load(const char *path, d2v_model *m, const d2v_ops *ops,
    long *step, d2v_rng *rng, d2v_err *err);

#endif
