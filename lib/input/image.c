/* image.c - JPEG decoding, views and resampling; see image.h. */
#include "input/image.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <turbojpeg.h>

/* ==== images ============================================================ */

int
d2v_image_init(d2v_image *im, int h, int w, int c, d2v_err *err)
{
	memset(im, 0, sizeof *im);
	if (h <= 0 || w <= 0 || (c != 1 && c != 3) ||
	    (size_t)h * (size_t)w > ((size_t)1 << 31) / 3)
		return d2v_err_set(err, D2V_ELIMIT, "image of %d x %d x %d "
		    "pixels is out of range", w, h, c);
	im->px = malloc((size_t)h * (size_t)w * (size_t)c);
	if (im->px == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory for a %d "
		    "x %d image", w, h);
	im->h = im->fh = h;
	im->w = im->fw = w;
	im->c = c;
	return 0;
}

void
d2v_image_free(d2v_image *im)
{
	free(im->px);
	memset(im, 0, sizeof *im);
}

/* ==== JPEG ============================================================== */

struct d2v_jpeg {
	tjhandle tj;
};

int
d2v_jpeg_new(d2v_jpeg **jp, d2v_err *err)
{
	d2v_jpeg *j = calloc(1, sizeof *j);

	*jp = NULL;
	if (j == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	if ((j->tj = tjInitDecompress()) == NULL) {
		free(j);
		return d2v_err_set(err, D2V_ENOMEM, "TurboJPEG: %s",
		    tjGetErrorStr2(NULL));
	}
	*jp = j;
	return 0;
}

void
d2v_jpeg_free(d2v_jpeg *j)
{
	if (j == NULL)
		return;
	tjDestroy(j->tj);
	free(j);
}

/* A failed call can leave the decompressor mid-stream (TurboJPEG 2.1 does
 * not abort it when reading a header fails), and the next file's header
 * would then be read from wherever a marker turns up: start afresh. */
static void
jpeg_reset(d2v_jpeg *j)
{
	tjhandle t = tjInitDecompress();

	if (t != NULL) {
		tjDestroy(j->tj);
		j->tj = t;
	}
}

static int
jpeg_header(d2v_jpeg *j, const void *buf, size_t len, int *w, int *h,
    int *subsamp, int *cs, d2v_err *err)
{
	*w = *h = 0;
	if (len < 4 || len > 0xffffffffUL)
		return d2v_err_set(err, D2V_EFORMAT, "not a JPEG file (%zu "
		    "bytes)", len);
	if (tjDecompressHeader3(j->tj, buf, (unsigned long)len, w, h, subsamp,
	    cs) != 0) {
		d2v_err_set(err, D2V_EFORMAT, "not a JPEG file: %s",
		    tjGetErrorStr2(j->tj));
		jpeg_reset(j);
		return D2V_EFORMAT;
	}
	if (*w <= 0 || *h <= 0)
		return d2v_err_set(err, D2V_EFORMAT, "not a whole JPEG file: its "
		    "header gives no image size (%d x %d)", *w, *h);
	if ((int64_t)*w * *h > D2V_JPEG_MAX_PIXELS)
		return d2v_err_set(err, D2V_ELIMIT, "a JPEG of %d x %d pixels, "
		    "above d2v's limit of %lld megapixels (a damaged or hostile "
		    "header?)", *w, *h, (long long)(D2V_JPEG_MAX_PIXELS >> 20));
	return 0;
}

int
d2v_jpeg_info(d2v_jpeg *j, const void *buf, size_t len, int *w, int *h,
    int *c, d2v_err *err)
{
	int subsamp, cs, rc = jpeg_header(j, buf, len, w, h, &subsamp, &cs,
	    err);

	if (rc < 0)
		return rc;
	*c = (cs == TJCS_GRAY || subsamp == TJSAMP_GRAY) ? 1 : 3;
	return 0;
}

/* The smallest of 1/8, 1/4, 1/2 (else 1) that keeps W x H at least
 * min_w x min_h; *sw, *sh get the decoded size, *num the scale in
 * eighths. */
static void
pick_scale(int w, int h, int min_w, int min_h, int *sw, int *sh, int *num)
{
	static const tjscalingfactor sf[] = {{1, 8}, {1, 4}, {1, 2}};

	*sw = w;
	*sh = h;
	*num = 8;
	if (min_w <= 0 || min_h <= 0)
		return;
	for (size_t i = 0; i < sizeof sf / sizeof sf[0]; i++) {
		int tw = TJSCALED(w, sf[i]), th = TJSCALED(h, sf[i]);

		if (tw >= min_w && th >= min_h) {
			*sw = tw;
			*sh = th;
			*num = 8 / sf[i].denom;
			return;
		}
	}
}

/* Adobe CMYK JPEGs store inverted inks: R = C * K / 255 on the stored
 * values.  cmyk is (N, 4); out is (N, C) with C 3, or 1 (luma). */
static void
cmyk_convert(const uint8_t *cmyk, int64_t n, int c, uint8_t *out)
{
	for (int64_t i = 0; i < n; i++) {
		const uint8_t *p = cmyk + 4 * i;
		int k = p[3], r = (p[0] * k + 127) / 255;
		int g = (p[1] * k + 127) / 255, b = (p[2] * k + 127) / 255;

		if (c == 3) {
			out[3 * i] = (uint8_t)r;
			out[3 * i + 1] = (uint8_t)g;
			out[3 * i + 2] = (uint8_t)b;
		} else {
			out[i] = (uint8_t)((r * 19595 + g * 38470 + b * 7471 +
			    0x8000) >> 16);
		}
	}
}

/* Turns a failed tjDecompress2 into an error: libjpeg's warnings too
 * ("Corrupt JPEG data: ..."), since the image they leave is not the
 * file's. */
static int
decode_status(d2v_jpeg *j, d2v_err *err)
{
	const char *msg = tjGetErrorStr2(j->tj);

	if (strstr(msg, "Premature end") != NULL)
		return d2v_err_set(err, D2V_ETRUNC, "truncated JPEG: %s", msg);
	return d2v_err_set(err, D2V_EFORMAT, "corrupt JPEG: %s", msg);
}

/* libjpeg's errors jump back to window_decode; its warnings are noted:
 * a premature end is a truncation, the rest corrupt data */
struct jerr {
	struct jpeg_error_mgr pub;
	jmp_buf jb;
	int trunc, corrupt;
	char msg[JMSG_LENGTH_MAX];
};

static void
jerr_exit(j_common_ptr ci)
{
	struct jerr *e = (struct jerr *)(void *)ci->err;

	(*ci->err->format_message)(ci, e->msg);
	longjmp(e->jb, 1);
}

static void
jerr_emit(j_common_ptr ci, int level)
{
	struct jerr *e = (struct jerr *)(void *)ci->err;

	if (level < 0 && ci->err->msg_code == JWRN_JPEG_EOF) {
		e->trunc = 1;
	} else if (level < 0 && !e->corrupt) {
		e->corrupt = 1;
		(*ci->err->format_message)(ci, e->msg);
	}
}

/* Columns dropped at each cropped side of a window (see window_decode) */
#define EDGE 1

/* Decodes the window of the sw x sh (scale num/8) image that covers rows
 * y0..y1-1 and columns x0..x1-1 of it, through libjpeg's partial
 * decompression: the rows above skipped, the columns cropped to whole
 * iMCUs, nothing below read.  0, or an error with out freed. */
static int
window_decode(const void *buf, size_t len, int c, int num, int x0, int x1,
    int y0, int y1, d2v_image *out, d2v_err *err)
{
	struct jpeg_decompress_struct ci;
	struct jerr je;
	JDIMENSION xo = (JDIMENSION)x0, cw = (JDIMENSION)(x1 - x0);
	int sw, sh, rc = 0;

	memset(out, 0, sizeof *out);
	memset(&je, 0, sizeof je);
	ci.err = jpeg_std_error(&je.pub);
	je.pub.error_exit = jerr_exit;
	je.pub.emit_message = jerr_emit;
	jpeg_create_decompress(&ci);
	if (setjmp(je.jb)) {
		d2v_image_free(out);
		jpeg_destroy_decompress(&ci);
		return d2v_err_set(err, D2V_EFORMAT, "corrupt JPEG: %s", je.msg);
	}
	jpeg_mem_src(&ci, buf, (unsigned long)len);
	jpeg_read_header(&ci, TRUE);
	ci.out_color_space = c == 1 ? JCS_GRAYSCALE : JCS_RGB;
	ci.scale_num = (unsigned)num;
	ci.scale_denom = 8;
	jpeg_start_decompress(&ci);
	sw = (int)ci.output_width;
	sh = (int)ci.output_height;
	jpeg_crop_scanline(&ci, &xo, &cw);
	if ((rc = d2v_image_init(out, y1 - y0, (int)cw, c, err)) == 0) {
		/* fancy upsampling takes the chroma past a cropped side as
		 * missing, so the outermost column of each cropped side is
		 * not the whole decode's: the caller asked for one more on
		 * each side, and those are dropped */
		int l = xo > 0 ? EDGE : 0;
		int r = (int)(xo + cw) < sw ? EDGE : 0, n = (int)cw - l - r;

		out->fw = sw;
		out->fh = sh;
		out->oy = y0;
		if (y0 > 0)
			jpeg_skip_scanlines(&ci, (JDIMENSION)y0);
		while ((int)ci.output_scanline < y1) {
			JSAMPROW row = out->px + (size_t)((int)ci.output_scanline -
			    y0) * cw * c;

			jpeg_read_scanlines(&ci, &row, 1);
		}
		for (int y = 0; y < y1 - y0 && n < (int)cw; y++)
			memmove(out->px + (size_t)y * n * c, out->px +
			    ((size_t)y * cw + l) * c, (size_t)n * c);
		out->ox = (int)xo + l;
		out->w = n;
		if (je.trunc) {
			d2v_image_free(out);
			rc = d2v_err_set(err, D2V_ETRUNC, "truncated JPEG: "
			    "Premature end of JPEG file");
		} else if (je.corrupt) {
			d2v_image_free(out);
			rc = d2v_err_set(err, D2V_EFORMAT, "corrupt JPEG: %s", je.msg);
		}
	}
	jpeg_abort_decompress(&ci);
	jpeg_destroy_decompress(&ci);
	return rc;
}

int
d2v_jpeg_decode(d2v_jpeg *j, const void *buf, size_t len, int c, int min_w,
    int min_h, const d2v_box *region, d2v_image *out, d2v_err *err)
{
	int w, h, subsamp, cs, sw, sh, num, rc, cmyk;
	uint8_t *tmp = NULL;

	memset(out, 0, sizeof *out);
	if ((rc = jpeg_header(j, buf, len, &w, &h, &subsamp, &cs, err)) < 0)
		return rc;
	if (c == 0)
		c = (cs == TJCS_GRAY || subsamp == TJSAMP_GRAY) ? 1 : 3;
	cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
	pick_scale(w, h, min_w, min_h, &sw, &sh, &num);
	/* a window, when the file ends as a whole one does and the window
	 * leaves out at least a tenth of the image */
	if (region != NULL && !cmyk && len >= 2 &&
	    ((const uint8_t *)buf)[len - 2] == 0xff &&
	    ((const uint8_t *)buf)[len - 1] == 0xd9) {
		double fx = (double)sw / w, fy = (double)sh / h;
		int x0 = (int)floor(fmax(region->x, 0) * fx);
		int y0 = (int)floor(fmax(region->y, 0) * fy);
		int x1 = (int)ceil(fmin(region->x + region->w, w) * fx);
		int y1 = (int)ceil(fmin(region->y + region->h, h) * fy);

		/* EDGE more columns each side, for window_decode to drop */
		x1 = (x1 <= x0 ? x0 + 1 : x1) + EDGE;
		x0 -= EDGE;
		x0 = x0 < 0 ? 0 : x0 > sw - 1 ? sw - 1 : x0;
		x1 = x1 > sw ? sw : x1 <= x0 ? x0 + 1 : x1;
		y0 = y0 < 0 ? 0 : y0 > sh - 1 ? sh - 1 : y0;
		y1 = y1 <= y0 ? y0 + 1 : y1 > sh ? sh : y1;
		if ((double)(x1 - x0) * (y1 - y0) < 0.9 * sw * sh)
			return window_decode(buf, len, c, num, x0, x1, y0, y1,
			    out, err);
	}
	if ((rc = d2v_image_init(out, sh, sw, c, err)) < 0)
		return rc;
	if (cmyk && (tmp = malloc((size_t)sw * (size_t)sh * 4)) == NULL) {
		d2v_image_free(out);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	if (tjDecompress2(j->tj, buf, (unsigned long)len, cmyk ? tmp : out->px,
	    sw, 0, sh, cmyk ? TJPF_CMYK : c == 1 ? TJPF_GRAY : TJPF_RGB,
	    0) != 0) {
		rc = decode_status(j, err);
		jpeg_reset(j);
		if (rc < 0) {
			free(tmp);
			d2v_image_free(out);
			return rc;
		}
	}
	if (cmyk)
		cmyk_convert(tmp, (int64_t)sw * sh, c, out->px);
	free(tmp);
	return 0;
}

/* ==== settings and views ================================================ */

void
d2v_augment_defaults(d2v_augment *a)
{
	memset(a, 0, sizeof *a);
	a->size = 224;
	a->channels = 0;
	a->crop = D2V_CROP_RANDOM;
	a->scale[0] = 0.2;
	a->scale[1] = 1.0;
	a->ratio[0] = 3.0 / 4.0;
	a->ratio[1] = 4.0 / 3.0;
	a->crop_pct = 0.875;
	a->flip = 0.5;
	a->interp = D2V_INTERP_BICUBIC;
	a->dct = 1;
}

static double
uniform(d2v_rng *r, double lo, double hi)
{
	return lo + (hi - lo) * d2v_rng_uniform(r);
}

void
d2v_crop_draw(const d2v_augment *a, int w, int h, d2v_rng *r, int *x,
    int *y, int *cw, int *ch)
{
	double area = (double)w * h, in_ratio = (double)w / h;
	double lr0 = log(a->ratio[0]), lr1 = log(a->ratio[1]);

	for (int t = 0; t < 10; t++) {
		double target = area * uniform(r, a->scale[0], a->scale[1]);
		double ar = exp(uniform(r, lr0, lr1));
		int tw = (int)nearbyint(sqrt(target * ar));
		int th = (int)nearbyint(sqrt(target / ar));

		if (tw > 0 && tw <= w && th > 0 && th <= h) {
			*y = (int)d2v_rng_below(r, (uint64_t)(h - th + 1));
			*x = (int)d2v_rng_below(r, (uint64_t)(w - tw + 1));
			*cw = tw;
			*ch = th;
			return;
		}
	}
	/* fallback: the whole image, clamped to the ratio range, centred */
	*cw = w;
	*ch = h;
	if (in_ratio < a->ratio[0])
		*ch = (int)nearbyint(w / a->ratio[0]);
	else if (in_ratio > a->ratio[1])
		*cw = (int)nearbyint(h * a->ratio[1]);
	*cw = *cw < 1 ? 1 : *cw > w ? w : *cw;
	*ch = *ch < 1 ? 1 : *ch > h ? h : *ch;
	*y = (h - *ch) / 2;
	*x = (w - *cw) / 2;
}

/* torchvision's Resize(short side S/crop_pct) then CenterCrop(S), as one
 * box in source pixels. */
static void
crop_center(const d2v_augment *a, int w, int h, d2v_box *box)
{
	int s = (int)(a->size / a->crop_pct + 1e-9), ow, oh;
	double sx, sy;

	if (s < a->size)
		s = a->size;
	if (w <= h) {
		ow = s;
		oh = (int)((double)s * h / w);
	} else {
		oh = s;
		ow = (int)((double)s * w / h);
	}
	if (oh < a->size)
		oh = a->size;
	if (ow < a->size)
		ow = a->size;
	sx = (double)w / ow;
	sy = (double)h / oh;
	box->x = nearbyint((ow - a->size) / 2.0) * sx;
	box->y = nearbyint((oh - a->size) / 2.0) * sy;
	box->w = a->size * sx;
	box->h = a->size * sy;
}

void
d2v_view_draw(d2v_view *v, const d2v_augment *a, int w, int h, d2v_rng *r)
{
	d2v_box whole = {0, 0, w, h};

	memset(v, 0, sizeof *v);
	v->clip = whole;
	if (a->crop == D2V_CROP_RANDOM) {
		int x, y, cw, ch;

		d2v_crop_draw(a, w, h, r, &x, &y, &cw, &ch);
		v->box = (d2v_box){x, y, cw, ch};
		v->clip = v->box;  /* torchvision crops, then resizes */
	} else if (a->crop == D2V_CROP_CENTER) {
		crop_center(a, w, h, &v->box);
	} else {
		v->box = whole;
	}
	if (a->dct) {
		v->need_w = (int)ceil(a->size * (double)w / v->box.w - 1e-9);
		v->need_h = (int)ceil(a->size * (double)h / v->box.h - 1e-9);
	}
	v->flip = a->flip > 0 && d2v_rng_uniform(r) < a->flip;
	for (int k = 0; k < 3; k++) {
		double j = a->jitter[k];

		v->factor[k] = j > 0 ? uniform(r, j < 1 ? 1 - j : 0, 1 + j) : 1;
		v->order[k] = k;
	}
	if (a->jitter[0] > 0 || a->jitter[1] > 0 || a->jitter[2] > 0)
		d2v_rng_shuffle_int(r, v->order, 3);
}

void
d2v_view_region(const d2v_view *v, const d2v_augment *a, int w, int h,
    d2v_box *region)
{
	/* the filter reaches support x the downscale factor past the box
	 * (at any decoded scale: at most 8 decoded pixels are 64 full-size
	 * ones), plus a pixel for rounding */
	double sx = v->box.w / a->size, sy = v->box.h / a->size;
	double rx = d2v_interp_support(a->interp) * fmax(sx, 8) + 1;
	double ry = d2v_interp_support(a->interp) * fmax(sy, 8) + 1;
	double x0 = fmax(fmax(v->box.x - rx, v->clip.x), 0);
	double y0 = fmax(fmax(v->box.y - ry, v->clip.y), 0);
	double x1 = fmin(fmin(v->box.x + v->box.w + rx, v->clip.x + v->clip.w), w);
	double y1 = fmin(fmin(v->box.y + v->box.h + ry, v->clip.y + v->clip.h), h);

	*region = (d2v_box){x0, y0, x1 - x0, y1 - y0};
}

/* ==== resampling ======================================================== */

double
d2v_interp_kernel(int interp, double t)
{
	const double a = -0.5;

	t = fabs(t);
	if (interp == D2V_INTERP_BILINEAR)
		return t < 1 ? 1 - t : 0;
	if (t < 1)
		return ((a + 2) * t - (a + 3)) * t * t + 1;
	if (t < 2)
		return (((t - 5) * t + 8) * t - 4) * a;
	return 0;
}

double
d2v_interp_support(int interp)
{
	return interp == D2V_INTERP_BILINEAR ? 1.0 : 2.0;
}

/* Filter taps for one axis, as PIL's precompute_coeffs: output i reads
 * input first[i] .. first[i] + n[i] - 1 with weights k + i * ksize. */
typedef struct taps {
	int out, ksize;
	int *first, *n;     /* first, n are (out) */
	float *k;           /* k is (out, ksize) */
} taps;

static void
taps_free(taps *t)
{
	free(t->first);
	free(t->n);
	free(t->k);
}

static int
taps_init(taps *t, double in0, double in1, double lo, double hi, int out,
    int interp, d2v_err *err)
{
	double scale = (in1 - in0) / out, fs = scale > 1 ? scale : 1;
	double support = d2v_interp_support(interp) * fs;
	int ilo = (int)floor(lo + 1e-6), ihi = (int)ceil(hi - 1e-6);

	if (ihi <= ilo)
		ihi = ilo + 1;
	t->out = out;
	t->ksize = (int)ceil(support) * 2 + 1;
	t->first = malloc((size_t)out * sizeof *t->first);
	t->n = malloc((size_t)out * sizeof *t->n);
	t->k = calloc((size_t)out * (size_t)t->ksize, sizeof *t->k);
	if (t->first == NULL || t->n == NULL || t->k == NULL) {
		taps_free(t);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	for (int i = 0; i < out; i++) {
		double center = in0 + (i + 0.5) * scale, sum = 0;
		int x0 = (int)floor(center - support + 0.5);
		int x1 = (int)floor(center + support + 0.5);
		float *k = t->k + (size_t)i * t->ksize;

		x0 = x0 < ilo ? ilo : x0;
		x1 = x1 > ihi ? ihi : x1;
		if (x1 - x0 > t->ksize)
			x1 = x0 + t->ksize;
		if (x1 <= x0) {  /* a box off the clip: the nearest pixel */
			x0 = (int)floor(center);
			x0 = x0 < ilo ? ilo : x0 >= ihi ? ihi - 1 : x0;
			x1 = x0 + 1;
		}
		for (int x = x0; x < x1; x++) {
			double wt = d2v_interp_kernel(interp,
			    (x - center + 0.5) / fs);

			k[x - x0] = (float)wt;
			sum += wt;
		}
		for (int x = 0; x < x1 - x0; x++)
			k[x] = sum != 0 ? (float)(k[x] / sum) :
			    1.0f / (float)(x1 - x0);
		t->first[i] = x0;
		t->n[i] = x1 - x0;
	}
	return 0;
}

/* 8 floats (two RGB pixels of 4 lanes, or two taps' weights), read at
 * any float's alignment */
typedef float v8f __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4)));
typedef float v4fu __attribute__((vector_size(16), aligned(4)));

/* Horizontal pass over rows y0..y0+rows-1: tmp is (rows, OW, C).  A row
 * is first widened to floats, four lanes a pixel for RGB (row4 is (W + kp,
 * 4), zero past the columns read), so that two taps are one 8-wide
 * multiply-add: the weights kk (OW, kp, 4) are each tap's repeated in four
 * lanes and padded with zeros to kp, an even count every output uses.
 * The 4th lane of an output is written and then overwritten by the next
 * pixel's first (tmp has room past its end). */
static void
resample_rows(const d2v_image *src, const taps *tx, int y0, int rows,
    float *restrict row4, float *restrict tmp, const float *restrict kk,
    int kp)
{
	int c = src->c, ow = tx->out, w = src->w, lanes = c == 3 ? 4 : 1;
	int x0 = tx->first[0], x1 = tx->first[ow - 1] + tx->n[ow - 1];

	for (int i = 0; i < ow; i++) {  /* the columns any tap reads */
		x0 = tx->first[i] < x0 ? tx->first[i] : x0;
		x1 = tx->first[i] + tx->n[i] > x1 ? tx->first[i] + tx->n[i] : x1;
	}
	if (lanes == 4)
		memset(row4 + (size_t)4 * x1, 0, (size_t)4 * kp * sizeof *row4);
	for (int y = 0; y < rows; y++) {
		const uint8_t *row = src->px + (size_t)(y0 + y) * w * c;
		float *o = tmp + (size_t)y * ow * c;

		if (lanes == 1) {
			for (int x = x0; x < x1; x++)
				row4[x] = row[x];
			for (int i = 0; i < ow; i++) {
				const float *restrict k = tx->k + (size_t)i * tx->ksize;
				const float *restrict p = row4 + tx->first[i];
				float s = 0;

				for (int x = 0; x < tx->n[i]; x++)
					s += k[x] * p[x];
				o[i] = s;
			}
			continue;
		}
		for (int x = x0; x < x1; x++) {
			row4[4 * x] = row[3 * x];
			row4[4 * x + 1] = row[3 * x + 1];
			row4[4 * x + 2] = row[3 * x + 2];
			row4[4 * x + 3] = 0;
		}
		/* two outputs at a time: two independent chains of adds */
		for (int i = 0; i < ow; i += 2) {
			int i1 = i + 1 < ow ? i + 1 : i;
			const float *restrict k0 = kk + (size_t)i * kp * 4;
			const float *restrict k1 = kk + (size_t)i1 * kp * 4;
			const float *restrict p0 = row4 + (size_t)tx->first[i] * 4;
			const float *restrict p1 = row4 + (size_t)tx->first[i1] * 4;
			v8f s0 = {0}, s1 = {0};
			v4fu r0, r1;

			for (int x = 0; x < kp; x += 2) {
				s0 += *(const v8fu *)(const void *)(p0 + 4 * x) *
				    *(const v8fu *)(const void *)(k0 + 4 * x);
				s1 += *(const v8fu *)(const void *)(p1 + 4 * x) *
				    *(const v8fu *)(const void *)(k1 + 4 * x);
			}
			r0 = __builtin_shufflevector(s0, s0, 0, 1, 2, 3) +
			    __builtin_shufflevector(s0, s0, 4, 5, 6, 7);
			r1 = __builtin_shufflevector(s1, s1, 0, 1, 2, 3) +
			    __builtin_shufflevector(s1, s1, 4, 5, 6, 7);
			*(v4fu *)(void *)(o + 3 * i) = r0;
			*(v4fu *)(void *)(o + 3 * i1) = r1;
		}
	}
}

/* Vertical pass: tmp (rows, OW, C) starting at source row y0 -> out
 * (C, OH, OW), columns mirrored when flip.  Whole rows are blended at a
 * time (acc is (OW * C)). */
static void
resample_cols(const float *tmp, int y0, const taps *ty, int ow, int c,
    int flip, float *restrict acc, uint8_t *restrict out)
{
	size_t len = (size_t)ow * c;
	int oh = ty->out;

	for (int j = 0; j < oh; j++) {
		const float *restrict k = ty->k + (size_t)j * ty->ksize;
		const float *restrict base = tmp + (size_t)(ty->first[j] - y0) *
		    len;
		size_t i = 0;

		/* acc = 0.5 + the sum of k[y] * row y, clamped to [0, 255.5)
		 * for the truncating conversion below; 16 columns at a time
		 * over all the taps, a tail loop for the rest */
		for (; i + 16 <= len; i += 16) { /* 16 sums in registers */
			v8f a0 = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
			v8f a1 = a0;

			for (int y = 0; y < ty->n[j]; y++) {
				const float *r = base + (size_t)y * len + i;

				a0 += k[y] * *(const v8fu *)(const void *)r;
				a1 += k[y] * *(const v8fu *)(const void *)(r + 8);
			}
			*(v8fu *)(void *)(acc + i) = a0;
			*(v8fu *)(void *)(acc + i + 8) = a1;
		}
		for (; i < len; i++) {
			float a = 0.5f;

			for (int y = 0; y < ty->n[j]; y++)
				a += k[y] * base[(size_t)y * len + i];
			acc[i] = a;
		}
		for (size_t i = 0; i < len; i++) {  /* maxss, minss */
			float v = acc[i] > 0.0f ? acc[i] : 0.0f;

			acc[i] = v < 255.49f ? v : 255.49f;
		}
		for (int ch = 0; ch < c; ch++) {
			uint8_t *o = out + ((size_t)ch * oh + j) * ow;
			const float *a = acc + ch;

			if (flip)
				for (int i = 0; i < ow; i++)
					o[ow - 1 - i] = (uint8_t)a[(size_t)i * c];
			else
				for (int i = 0; i < ow; i++)
					o[i] = (uint8_t)a[(size_t)i * c];
		}
	}
}

int
d2v_image_resample(const d2v_image *src, const d2v_box *box,
    const d2v_box *clip, int ow, int oh, int interp, int flip, uint8_t *out,
    d2v_err *err)
{
	taps tx = {0}, ty = {0};
	float *tmp, *kk;
	int rc, y0, rows, kp;
	size_t ntmp, nrow4;

	if (ow <= 0 || oh <= 0 || box->w <= 0 || box->h <= 0)
		return d2v_err_set(err, D2V_EINVAL, "resample: empty box or "
		    "output");
	if ((rc = taps_init(&tx, box->x, box->x + box->w, fmax(clip->x, 0),
	    fmin(clip->x + clip->w, src->w), ow, interp, err)) < 0)
		return rc;
	if ((rc = taps_init(&ty, box->y, box->y + box->h, fmax(clip->y, 0),
	    fmin(clip->y + clip->h, src->h), oh, interp, err)) < 0) {
		taps_free(&tx);
		return rc;
	}
	y0 = ty.first[0];
	rows = ty.first[oh - 1] + ty.n[oh - 1] - y0;
	for (int j = 0; j < oh; j++) {  /* first[] rises, but be sure */
		int e = ty.first[j] + ty.n[j];

		y0 = ty.first[j] < y0 ? ty.first[j] : y0;
		rows = e - y0 > rows ? e - y0 : rows;
	}
	/* rows of the horizontal pass and one row of the vertical one (ntmp,
	 * with a float past the end), one source row in floats (nrow4, zero
	 * padded by kp pixels) and the lane-repeated weights (ow, kp, 4) */
	kp = (tx.ksize + 1) & ~1;
	ntmp = ((size_t)rows + 1) * ow * src->c + 4;
	nrow4 = ((size_t)src->w + kp) * 4;
	tmp = malloc((ntmp + nrow4 + (size_t)ow * kp * 4) * sizeof *tmp);
	if (tmp == NULL) {
		taps_free(&tx);
		taps_free(&ty);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	kk = tmp + ntmp + nrow4;
	for (int i = 0; i < ow; i++)
		for (int x = 0; x < kp; x++)
			for (int l = 0; l < 4; l++)
				kk[((size_t)i * kp + x) * 4 + l] = x < tx.ksize ?
				    tx.k[(size_t)i * tx.ksize + x] : 0.0f;
	resample_rows(src, &tx, y0, rows, tmp + ntmp, tmp, kk, kp);
	resample_cols(tmp, y0, &ty, ow, src->c, flip,
	    tmp + (size_t)rows * ow * src->c, out);
	free(tmp);
	taps_free(&tx);
	taps_free(&ty);
	return 0;
}

/* ==== colour jitter ===================================================== */

/* PIL's blend: degenerate + f * (x - degenerate), truncated, clipped. */
static uint8_t
blend8(float degenerate, float f, int x)
{
	float v = degenerate + f * ((float)x - degenerate);

	return v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)v;
}

/* PIL's RGB to L: (299 R + 587 G + 114 B) / 1000 in fixed point. */
static uint8_t
luma(int r, int g, int b)
{
	return (uint8_t)((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
}

void
d2v_image_jitter(uint8_t *x, int c, int64_t n, const d2v_view *v)
{
	uint8_t *r = x, *g = x + (c == 3 ? n : 0), *b = x + (c == 3 ? 2 * n : 0);

	for (int step = 0; step < 3; step++) {
		int op = v->order[step];
		float f = (float)v->factor[op];

		if (f == 1.0f || (op == 2 && c != 3))
			continue;
		if (op == 0) {          /* brightness: blend with black */
			for (int64_t i = 0; i < c * n; i++)
				x[i] = blend8(0, f, x[i]);
		} else if (op == 1) {   /* contrast: blend with the mean grey */
			double sum = 0;
			float m;

			for (int64_t i = 0; i < n; i++)
				sum += luma(r[i], g[i], b[i]);
			m = (float)(int)(sum / (n > 0 ? n : 1) + 0.5);
			for (int64_t i = 0; i < c * n; i++)
				x[i] = blend8(m, f, x[i]);
		} else {                /* saturation: blend with grey */
			for (int64_t i = 0; i < n; i++) {
				float l = luma(r[i], g[i], b[i]);

				r[i] = blend8(l, f, r[i]);
				g[i] = blend8(l, f, g[i]);
				b[i] = blend8(l, f, b[i]);
			}
		}
	}
}

/* ==== rendering ========================================================= */

int
d2v_view_render(const d2v_view *v, const d2v_augment *a,
    const d2v_image *src, int w, int h, uint8_t *out, d2v_err *err)
{
	/* full size -> the decoded scale, then into src's window */
	double sx = (double)src->fw / w, sy = (double)src->fh / h;
	d2v_box box = {v->box.x * sx - src->ox, v->box.y * sy - src->oy,
	    v->box.w * sx, v->box.h * sy};
	d2v_box clip = {v->clip.x * sx - src->ox, v->clip.y * sy - src->oy,
	    v->clip.w * sx, v->clip.h * sy};
	int c = a->channels ? a->channels : src->c, s = a->size, rc;
	int64_t n = (int64_t)s * s;
	uint8_t *tmp = out;

	if (c != 1 && c != 3)
		return d2v_err_set(err, D2V_EINVAL, "%d channels", c);
	if (src->c == 3 && c == 1 &&
	    (tmp = malloc((size_t)n * 3)) == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	rc = d2v_image_resample(src, &box, &clip, s, s, a->interp, v->flip,
	    tmp, err);
	if (rc == 0 && src->c == 3 && c == 1) {
		for (int64_t i = 0; i < n; i++)
			out[i] = luma(tmp[i], tmp[n + i], tmp[2 * n + i]);
	} else if (rc == 0 && src->c == 1 && c == 3) {
		memcpy(out + n, out, (size_t)n);
		memcpy(out + 2 * n, out, (size_t)n);
	}
	if (tmp != out)
		free(tmp);
	if (rc == 0)
		d2v_image_jitter(out, c, n, v);
	return rc;
}
