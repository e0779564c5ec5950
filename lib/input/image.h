/*
 * image.h - the image front end: JPEG decoding with DCT downscaling, the
 * seeded augmentations of the data2vec recipes, and resampling.
 *
 * Letters: H, W are a source image's rows and columns, C its channels (1 grey
 * or 3 RGB), S the output side.  A decoded image is interleaved (H, W, C); an
 * output view is planar (C, S, S), the layout of the stream's x tensor.
 *
 * One view of one image, the way d2v-tokenize makes it:
 *
 *     d2v_augment a;  d2v_augment_defaults(&a);      // 224, random crop ...
 *     d2v_jpeg_info(dec, buf, len, &w, &h, &c, &err);
 *     d2v_rng_seed(&r, seed, record_index, view);
 *     d2v_view_draw(&v, &a, w, h, &r);               // crop box, flip, jitter
 *     d2v_view_region(&v, &a, w, h, &reg);           // the pixels it reads
 *     d2v_jpeg_decode(dec, buf, len, 0, v.need_w, v.need_h, &reg, &img,
 *         &err);
 *     d2v_view_render(&v, &a, &img, w, h, x, &err);  // x is (C, S, S)
 *
 * The view is drawn in the coordinates of the full-size image, before
 * decoding, so the decoder can pick the smallest DCT scale (1/8, 1/4, 1/2)
 * that still gives the crop at least S pixels each way: a big photo is
 * decoded at an eighth of the cost and nothing the final resize keeps is
 * lost.  Only the rows and (whole iMCU) columns the view reads are
 * decoded: the rows below are never read, those above are skipped (entropy
 * decoded only), and columns left and right of it are not transformed.
 *
 * Resampling is PIL's (what torchvision uses on PIL images): a separable
 * convolution with the bicubic (a = -0.5) or bilinear kernel, widened by the
 * downscale factor so that shrinking is antialiased.  The random crop draws
 * its box exactly as torchvision's RandomResizedCrop.get_params does (ten
 * tries, then a centre crop of the ratio-clamped box).
 */
#ifndef D2V_INPUT_IMAGE_H
#define D2V_INPUT_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "rng.h"

/* The largest JPEG d2v decodes, in pixels (2^28, 268 megapixels): a
 * header claiming more is refused before any decoding. */
#define D2V_JPEG_MAX_PIXELS ((int64_t)1 << 28)

/* ---- images ------------------------------------------------------------ */

typedef struct d2v_image {
	int h, w, c;       /* H, W, C of the pixels held */
	int fw, fh;        /* the whole image's size at this scale */
	int ox, oy;        /* where px's first pixel sits in the whole image */
	uint8_t *px;       /* px is (H, W, C), owned */
} d2v_image;

/* Allocates an uninitialised H x W x C image, whole (fw, fh = w, h). */
int d2v_image_init(d2v_image *im, int h, int w, int c, d2v_err *err);
/* Frees the pixels and zeroes the struct; safe on a zeroed struct. */
void d2v_image_free(d2v_image *im);

/* A box in pixel coordinates: x, y of the top-left corner, w, h its size. */
typedef struct d2v_box {
	double x, y, w, h;
} d2v_box;

/* ---- JPEG decoding ----------------------------------------------------- */

/* A TurboJPEG decompressor: not thread-safe, so one per thread. */
typedef struct d2v_jpeg d2v_jpeg;

int d2v_jpeg_new(d2v_jpeg **j, d2v_err *err);
void d2v_jpeg_free(d2v_jpeg *j);
/* Reads the header only: full size and channels as stored (1 for grey, 3
 * for colour and CMYK). */
int d2v_jpeg_info(d2v_jpeg *j, const void *buf, size_t len, int *w, int *h,
    int *c, d2v_err *err);
/*
 * Decodes into out (uninitialised) with channels c (0: as stored).  When
 * min_w and min_h are > 0, decodes at the smallest DCT scale of 1/8, 1/4 and
 * 1/2 whose result is still at least min_w x min_h; 0 decodes at full size.
 * region (in full-size pixels, NULL for all) is the part wanted: out may
 * then hold only a window of the image that covers it (out->ox, oy, fw,
 * fh say where), decoded exactly as the whole would be.  A window is
 * decoded only from a file that ends with its end-of-image marker; others
 * (a truncated file, trailing bytes) and CMYK are decoded whole.
 * A corrupt or truncated file is an error (D2V_EFORMAT or D2V_ETRUNC);
 * warnings that leave the whole image decoded are not.
 */
int d2v_jpeg_decode(d2v_jpeg *j, const void *buf, size_t len, int c,
    int min_w, int min_h, const d2v_box *region, d2v_image *out,
    d2v_err *err);

/* ---- augmentation settings --------------------------------------------- */

enum d2v_crop {
	D2V_CROP_RANDOM,   /* random-resized-crop (training) */
	D2V_CROP_CENTER,   /* resize the short side to S/crop_pct, centre crop S */
	D2V_CROP_NONE,     /* the whole image resized to S x S */
};

enum d2v_interp {
	D2V_INTERP_BICUBIC,
	D2V_INTERP_BILINEAR,
};

typedef struct d2v_augment {
	int size;              /* S */
	int channels;          /* output C: 1, 3, or 0 for as the source has it */
	int crop;              /* enum d2v_crop */
	double scale[2];       /* random crop area fraction, lo..hi */
	double ratio[2];       /* random crop aspect ratio w/h, lo..hi */
	double crop_pct;       /* centre crop: S / short side after resize */
	double flip;           /* horizontal flip probability */
	double jitter[3];      /* brightness, contrast, saturation; 0 = off */
	int interp;            /* enum d2v_interp */
	int dct;               /* 1: let the decoder downscale in the DCT */
} d2v_augment;

/* S 224, channels 0, random crop with scale 0.2..1 and ratio 3/4..4/3 (the
 * v2 recipe), crop_pct 0.875, flip 0.5, no jitter, bicubic, DCT scaling. */
void d2v_augment_defaults(d2v_augment *a);

/* ---- views ------------------------------------------------------------- */

/* One drawn augmentation, in the coordinates of the full-size W x H image. */
typedef struct d2v_view {
	d2v_box box;          /* the part of the source that becomes S x S */
	d2v_box clip;         /* taps of the resampling filter stay inside */
	int need_w, need_h;   /* smallest decoded size that loses nothing */
	int flip;             /* mirror left-right */
	double factor[3];     /* brightness, contrast, saturation (1 = same) */
	int order[3];         /* the order the three are applied in */
} d2v_view;

/* Draws a view of a W x H image from r: crop box, flip, jitter.  The draws
 * are a fixed sequence, so (seed, record, view) fixes the view. */
void d2v_view_draw(d2v_view *v, const d2v_augment *a, int w, int h,
    d2v_rng *r);

/* Draws the crop box that torchvision's RandomResizedCrop.get_params picks
 * for a W x H image; integer pixels. */
void d2v_crop_draw(const d2v_augment *a, int w, int h, d2v_rng *r,
    int *x, int *y, int *cw, int *ch);

/* The part of the full-size W x H image that rendering v reads: its box,
 * widened by the filter's reach, within its clip and the image. */
void d2v_view_region(const d2v_view *v, const d2v_augment *a, int w, int h,
    d2v_box *region);

/*
 * Renders view v of src into out: resample the box (mapped from the full
 * W x H onto src's decoded size), mirror, jitter, and convert to channels
 * a->channels (grey to RGB by copying, RGB to grey by luma).  out is
 * (C, S, S) with C = a->channels, or src->c when that is 0.
 */
int d2v_view_render(const d2v_view *v, const d2v_augment *a,
    const d2v_image *src, int w, int h, uint8_t *out, d2v_err *err);

/* ---- the pieces, exposed for tests ------------------------------------- */

/*
 * Resamples box of src to an OW x OH grid with PIL's filters: filter taps
 * are clamped into clip.  out is (C, OH, OW), C = src->c; flip mirrors.
 */
int d2v_image_resample(const d2v_image *src, const d2v_box *box,
    const d2v_box *clip, int ow, int oh, int interp, int flip, uint8_t *out,
    d2v_err *err);

/* Colour jitter in place on x (C, N), N pixels per channel: the three
 * blends of v in v->order, each truncated to u8 as PIL's ImageEnhance does.
 * Contrast blends with the mean grey of x, the crop; BEiT's ColorJitter,
 * applied before its crop, would take the whole image's mean. */
void d2v_image_jitter(uint8_t *x, int c, int64_t n, const d2v_view *v);

/* The filter kernel of interp at t, and its support (half-width). */
double d2v_interp_kernel(int interp, double t);
double d2v_interp_support(int interp);

#endif
