/* test_tokenize_image.c - the image front end: resampling against a slow
 * twin, crops with known pixels, JPEG round trips in several sizes and
 * subsamplings, DCT downscaling, jitter, corrupt and truncated files. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <turbojpeg.h>

#include "input/image.h"
#include "t.h"

/* ---- helpers ------------------------------------------------------------ */

/* The ramp of tests/tools/gen-media: R = x*255/(W-1), G = y*255/(H-1). */
static int
ramp(int x, int y, int c, int w, int h)
{
	int r = w > 1 ? x * 255 / (w - 1) : 0, g = h > 1 ? y * 255 / (h - 1) : 0;

	return c == 0 ? r : c == 1 ? g : (r + g) / 2;
}

static void
make_ramp(d2v_image *im, int w, int h, int c)
{
	d2v_image_init(im, h, w, c, NULL);
	for (int y = 0; y < h; y++)
		for (int x = 0; x < w; x++)
			for (int k = 0; k < c; k++)
				im->px[((size_t)y * w + x) * c + k] =
				    (uint8_t)ramp(x, y, k, w, h);
}

static void
make_noise(d2v_image *im, int w, int h, int c, unsigned seed)
{
	d2v_rng r;

	d2v_rng_seed(&r, seed, 0, 0);
	d2v_image_init(im, h, w, c, NULL);
	for (size_t i = 0; i < (size_t)w * h * c; i++)
		im->px[i] = (uint8_t)d2v_rng_below(&r, 256);
}

/* JPEG of im; subsamp TJSAMP_*, flags TJFLAG_* (TJFLAG_PROGRESSIVE); *len
 * bytes, tjFree the result. */
static unsigned char *
encode_flags(const d2v_image *im, int subsamp, int q, int flags,
    unsigned long *len)
{
	tjhandle tj = tjInitCompress();
	unsigned char *jpg = NULL;

	*len = 0;
	if (tjCompress2(tj, im->px, im->w, 0, im->h, im->c == 1 ? TJPF_GRAY :
	    TJPF_RGB, &jpg, len, im->c == 1 ? TJSAMP_GRAY : subsamp, q, flags))
		jpg = NULL;
	tjDestroy(tj);
	return jpg;
}

static unsigned char *
encode(const d2v_image *im, int subsamp, int q, unsigned long *len)
{
	return encode_flags(im, subsamp, q, 0, len);
}

/* The slow twin: PIL's resampling written as a direct 2-D sum per output
 * pixel (in double, no separable pass).  out is (C, OH, OW). */
static void
resample_ref(const d2v_image *src, const d2v_box *b, const d2v_box *clip,
    int ow, int oh, int interp, int flip, uint8_t *out)
{
	double sx = b->w / ow, sy = b->h / oh;
	double fx = sx > 1 ? sx : 1, fy = sy > 1 ? sy : 1;
	double sup = d2v_interp_support(interp);
	int xlo = (int)floor(fmax(clip->x, 0) + 1e-6);
	int xhi = (int)ceil(fmin(clip->x + clip->w, src->w) - 1e-6);
	int ylo = (int)floor(fmax(clip->y, 0) + 1e-6);
	int yhi = (int)ceil(fmin(clip->y + clip->h, src->h) - 1e-6);

	for (int j = 0; j < oh; j++)
		for (int i = 0; i < ow; i++)
			for (int c = 0; c < src->c; c++) {
				double cx = b->x + (i + 0.5) * sx;
				double cy = b->y + (j + 0.5) * sy;
				int x0 = (int)fmax(floor(cx - sup * fx + 0.5), xlo);
				int x1 = (int)fmin(floor(cx + sup * fx + 0.5), xhi);
				int y0 = (int)fmax(floor(cy - sup * fy + 0.5), ylo);
				int y1 = (int)fmin(floor(cy + sup * fy + 0.5), yhi);
				double s = 0, wx = 0, wy = 0;

				for (int x = x0; x < x1; x++)
					wx += d2v_interp_kernel(interp,
					    (x - cx + 0.5) / fx);
				for (int y = y0; y < y1; y++)
					wy += d2v_interp_kernel(interp,
					    (y - cy + 0.5) / fy);
				for (int y = y0; y < y1; y++)
					for (int x = x0; x < x1; x++)
						s += d2v_interp_kernel(interp,
						    (x - cx + 0.5) / fx) *
						    d2v_interp_kernel(interp,
						    (y - cy + 0.5) / fy) *
						    src->px[((size_t)y * src->w +
						    x) * src->c + c];
				s /= wx * wy;
				out[((size_t)c * oh + j) * ow +
				    (flip ? ow - 1 - i : i)] = (uint8_t)(s < 0 ?
				    0 : s > 255 ? 255 : floor(s + 0.5));
			}
}

static int
max_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
	int m = 0;

	for (size_t i = 0; i < n; i++) {
		int d = abs((int)a[i] - (int)b[i]);

		m = d > m ? d : m;
	}
	return m;
}

/* ---- tests -------------------------------------------------------------- */

static void
test_resample_twin(void)
{
	static const struct { int w, h, c, ow, oh; d2v_box box; } cs[] = {
		{64, 48, 3, 32, 32, {3, 5, 50, 40}},     /* shrink */
		{64, 48, 3, 100, 90, {10.5, 7.25, 20, 30}}, /* enlarge */
		{40, 40, 1, 17, 23, {0, 0, 40, 40}},     /* odd sizes */
		{300, 200, 3, 224, 224, {20, 10, 260, 180}},
		{30, 20, 3, 224, 224, {2, 3, 7, 5}},     /* big zoom */
	};
	int worst = 0;

	for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++)
		for (int interp = 0; interp < 2; interp++)
			for (int flip = 0; flip < 2; flip++)
				for (int clipbox = 0; clipbox < 2; clipbox++) {
		d2v_image im;
		size_t n = (size_t)cs[k].c * cs[k].ow * cs[k].oh;
		uint8_t *a = malloc(n), *b = malloc(n);
		d2v_box whole = {0, 0, cs[k].w, cs[k].h};
		const d2v_box *clip = clipbox ? &cs[k].box : &whole;
		int d;

		make_noise(&im, cs[k].w, cs[k].h, cs[k].c, (unsigned)k);
		d2v_image_resample(&im, &cs[k].box, clip, cs[k].ow, cs[k].oh,
		    interp, flip, a, NULL);
		resample_ref(&im, &cs[k].box, clip, cs[k].ow, cs[k].oh, interp,
		    flip, b);
		d = max_diff(a, b, n);
		worst = d > worst ? d : worst;
		free(a);
		free(b);
		d2v_image_free(&im);
	}
	T_OK(worst <= 1, "separable resampling matches the 2-D slow twin "
	    "within 1 (worst %d) over 40 cases", worst);
}

static void
test_resample_identity(void)
{
	d2v_image im;
	uint8_t *out = malloc(3 * 40 * 30), *ref = malloc(3 * 40 * 30);
	d2v_box box = {0, 0, 40, 30};
	int bad = 0;

	make_noise(&im, 40, 30, 3, 7);
	for (int interp = 0; interp < 2; interp++) {
		d2v_image_resample(&im, &box, &box, 40, 30, interp, 0, out,
		    NULL);
		for (int c = 0; c < 3; c++)
			for (int i = 0; i < 40 * 30; i++)
				bad += out[c * 1200 + i] != im.px[i * 3 + c];
	}
	T_OK(bad == 0, "resampling a box to its own size is an exact copy "
	    "(%d pixels differ)", bad);
	box = (d2v_box){0, 0, 40, 30};
	d2v_image_resample(&im, &box, &box, 40, 30, 0, 1, out, NULL);
	bad = 0;
	for (int y = 0; y < 30; y++)
		for (int x = 0; x < 40; x++)
			bad += out[y * 40 + x] != im.px[(y * 40 + 39 - x) * 3];
	T_OK(bad == 0, "flip mirrors the columns exactly");
	free(out);
	free(ref);
	d2v_image_free(&im);
}

/* A centre crop of a 256 x 256 image to 224 is the middle 224 pixels. */
static void
test_center_crop_pixels(void)
{
	d2v_augment a;
	d2v_image im;
	d2v_view v;
	d2v_rng r;
	uint8_t *out = malloc(3 * 224 * 224);
	int bad = 0;

	d2v_augment_defaults(&a);
	a.crop = D2V_CROP_CENTER;
	a.flip = 0;
	make_noise(&im, 256, 256, 3, 3);
	d2v_rng_seed(&r, 1, 0, 0);
	d2v_view_draw(&v, &a, 256, 256, &r);
	T_OK(v.box.x == 16 && v.box.y == 16 && v.box.w == 224 &&
	    v.box.h == 224, "centre crop box of 256x256 at 224 is "
	    "(16,16,224,224): (%g,%g,%g,%g)", v.box.x, v.box.y, v.box.w,
	    v.box.h);
	d2v_view_render(&v, &a, &im, 256, 256, out, NULL);
	for (int c = 0; c < 3; c++)
		for (int y = 0; y < 224; y++)
			for (int x = 0; x < 224; x++)
				bad += out[(c * 224 + y) * 224 + x] !=
				    im.px[((y + 16) * 256 + x + 16) * 3 + c];
	T_OK(bad == 0, "centre crop holds exactly the source's middle pixels "
	    "(%d differ)", bad);
	d2v_image_free(&im);

	/* 500 x 375 -> short side 256: 341 x 256, crop at (58, 16): Python
	 * rounds 58.5 to even */
	d2v_view_draw(&v, &a, 500, 375, &r);
	T_OK(fabs(v.box.x - 58 * 500.0 / 341) < 1e-9 &&
	    fabs(v.box.y - 16 * 375.0 / 256) < 1e-9 &&
	    fabs(v.box.w - 224 * 500.0 / 341) < 1e-9,
	    "centre crop of 500x375 is torchvision's Resize(256) + "
	    "CenterCrop(224) box");
	free(out);
}

static void
test_random_crop(void)
{
	d2v_augment a;
	int ok_bounds = 1, ok_det = 1, ok_area = 1, ok_ratio = 1, flips = 0;
	double amin = 1, amax = 0;

	d2v_augment_defaults(&a);
	for (int i = 0; i < 2000; i++) {
		d2v_rng r1, r2;
		d2v_view v1, v2;
		double area, ratio;

		d2v_rng_seed(&r1, 5, (uint64_t)i, 0);
		d2v_rng_seed(&r2, 5, (uint64_t)i, 0);
		d2v_view_draw(&v1, &a, 500, 375, &r1);
		d2v_view_draw(&v2, &a, 500, 375, &r2);
		ok_det &= memcmp(&v1, &v2, sizeof v1) == 0;
		ok_bounds &= v1.box.x >= 0 && v1.box.y >= 0 &&
		    v1.box.x + v1.box.w <= 500 && v1.box.y + v1.box.h <= 375 &&
		    v1.box.w >= 1 && v1.box.h >= 1 &&
		    v1.box.x == floor(v1.box.x);
		area = v1.box.w * v1.box.h / (500.0 * 375);
		ratio = v1.box.w / v1.box.h;
		amin = fmin(amin, area);
		amax = fmax(amax, area);
		ok_area &= area > 0.19 && area < 1.01;
		ok_ratio &= ratio > 0.74 && ratio < 1.35;
		flips += v1.flip;
	}
	T_OK(ok_det, "a view depends only on (seed, record, view)");
	T_OK(ok_bounds, "random crops are integer boxes inside the image");
	T_OK(ok_area && amin < 0.25 && amax > 0.9, "crop areas span 0.2..1 "
	    "of the image (%.3f..%.3f)", amin, amax);
	T_OK(ok_ratio, "crop aspect ratios stay in 3/4..4/3");
	T_OK(flips > 900 && flips < 1100, "about half the views are flipped "
	    "(%d of 2000)", flips);
	{
		d2v_rng r;
		int x, y, w, h;

		d2v_rng_seed(&r, 1, 0, 0);
		d2v_crop_draw(&a, 1000, 10, &r, &x, &y, &w, &h);
		T_OK(w == 13 && h == 10 && x == (1000 - 13) / 2 && y == 0,
		    "a 1000x10 image falls back to the centred 4/3 box "
		    "(%d,%d %dx%d)", x, y, w, h);
	}
	{
		d2v_rng r1, r2;
		d2v_view v1, v2;

		d2v_rng_seed(&r1, 5, 1, 0);
		d2v_rng_seed(&r2, 5, 1, 1);
		d2v_view_draw(&v1, &a, 500, 375, &r1);
		d2v_view_draw(&v2, &a, 500, 375, &r2);
		T_OK(memcmp(&v1.box, &v2.box, sizeof v1.box) != 0,
		    "two views of one record differ");
	}
}

static void
test_jpeg_roundtrip(void)
{
	static const int sizes[][2] = {{1, 1}, {17, 9}, {64, 48}, {500, 375},
	    {375, 500}, {1024, 768}};
	static const int subs[] = {TJSAMP_444, TJSAMP_422, TJSAMP_420,
	    TJSAMP_GRAY};
	static const char *const subname[] = {"444", "422", "420", "gray"};
	d2v_jpeg *dec;

	d2v_jpeg_new(&dec, NULL);
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
		for (int k = 0; k < 4; k++) {
			int w = sizes[s][0], h = sizes[s][1], c = k == 3 ? 1 : 3;
			int iw, ih, ic, rc;
			unsigned long len;
			d2v_image im, out;
			unsigned char *jpg;
			double err = 0;

			make_ramp(&im, w, h, c);
			jpg = encode(&im, subs[k], 95, &len);
			rc = d2v_jpeg_info(dec, jpg, len, &iw, &ih, &ic, NULL);
			rc |= d2v_jpeg_decode(dec, jpg, len, 0, 0, 0, NULL, &out, NULL);
			if (rc == 0)
				for (size_t i = 0; i < (size_t)w * h * c; i++)
					err += abs(out.px[i] - im.px[i]);
			err /= (double)w * h * c;
			T_OK(rc == 0 && iw == w && ih == h && ic == c &&
			    out.w == w && out.h == h && out.c == c && err < 3,
			    "JPEG %dx%d %s decodes to the ramp (mean error %.2f)",
			    w, h, subname[k], err);
			d2v_image_free(&out);
			d2v_image_free(&im);
			tjFree(jpg);
		}
	d2v_jpeg_free(dec);
}

static void
test_jpeg_channels(void)
{
	d2v_jpeg *dec;
	d2v_image im, grey, rgb, out;
	unsigned long len, glen;
	unsigned char *jpg, *gjpg;
	int bad = 0;

	d2v_jpeg_new(&dec, NULL);
	make_ramp(&im, 64, 48, 3);
	make_ramp(&grey, 64, 48, 1);
	jpg = encode(&im, TJSAMP_444, 95, &len);
	gjpg = encode(&grey, TJSAMP_GRAY, 95, &glen);
	d2v_jpeg_decode(dec, gjpg, glen, 3, 0, 0, NULL, &rgb, NULL);
	for (int i = 0; i < 64 * 48; i++)
		bad += rgb.px[3 * i] != rgb.px[3 * i + 1] ||
		    rgb.px[3 * i] != rgb.px[3 * i + 2];
	T_OK(rgb.c == 3 && bad == 0, "a grey JPEG asked for 3 channels has "
	    "R = G = B");
	d2v_jpeg_decode(dec, jpg, len, 1, 0, 0, NULL, &out, NULL);
	T_OK(out.c == 1 && abs(out.px[47 * 64 + 63] - (255 * 299 + 255 * 587 +
	    255 * 114) / 1000) <= 3, "a colour JPEG asked for 1 channel is luma");
	d2v_image_free(&out);
	d2v_image_free(&rgb);
	d2v_image_free(&im);
	d2v_image_free(&grey);
	tjFree(jpg);
	tjFree(gjpg);
	d2v_jpeg_free(dec);
}

static void
test_jpeg_cmyk(void)
{
	tjhandle tj = tjInitCompress();
	d2v_image im, out;
	unsigned char *jpg = NULL, *cmyk = malloc(64 * 48 * 4);
	unsigned long len = 0;
	double err = 0;
	d2v_jpeg *dec;
	int c = 0, rc;

	make_ramp(&im, 64, 48, 3);
	for (int i = 0; i < 64 * 48; i++) {
		memcpy(cmyk + 4 * i, im.px + 3 * i, 3);
		cmyk[4 * i + 3] = 255;  /* inverted inks: no black */
	}
	tjCompress2(tj, cmyk, 64, 0, 48, TJPF_CMYK, &jpg, &len, TJSAMP_444,
	    95, 0);
	d2v_jpeg_new(&dec, NULL);
	d2v_jpeg_info(dec, jpg, len, &rc, &rc, &c, NULL);
	rc = d2v_jpeg_decode(dec, jpg, len, 0, 0, 0, NULL, &out, NULL);
	for (int i = 0; rc == 0 && i < 64 * 48 * 3; i++)
		err += abs(out.px[i] - im.px[i]);
	T_OK(rc == 0 && c == 3 && out.c == 3 && err / (64 * 48 * 3) < 3,
	    "a CMYK JPEG decodes to RGB (mean error %.2f)",
	    err / (64 * 48 * 3));
	d2v_image_free(&out);
	d2v_image_free(&im);
	tjFree(jpg);
	free(cmyk);
	tjDestroy(tj);
	d2v_jpeg_free(dec);
}

/* Decoding at a DCT scale gives nearly the pixels of a full decode. */
static void
test_dct_scaling(void)
{
	d2v_augment a;
	d2v_image im, full, small;
	d2v_jpeg *dec;
	unsigned char *jpg;
	unsigned long len;
	uint8_t *x1 = malloc(3 * 224 * 224), *x2 = malloc(3 * 224 * 224);
	d2v_view v;
	d2v_rng r;
	double diff = 0;

	d2v_augment_defaults(&a);
	a.crop = D2V_CROP_CENTER;
	make_ramp(&im, 1024, 768, 3);
	jpg = encode(&im, TJSAMP_420, 90, &len);
	d2v_jpeg_new(&dec, NULL);
	d2v_rng_seed(&r, 1, 0, 0);
	d2v_view_draw(&v, &a, 1024, 768, &r);
	T_OK(v.need_w == 341 && v.need_h == 256, "centre crop of 1024x768 "
	    "needs 341x256 decoded (%dx%d)", v.need_w, v.need_h);
	d2v_jpeg_decode(dec, jpg, len, 0, v.need_w, v.need_h, NULL, &small, NULL);
	d2v_jpeg_decode(dec, jpg, len, 0, 0, 0, NULL, &full, NULL);
	T_OK(small.w == 512 && small.h == 384 && full.w == 1024,
	    "the decoder picks the 1/2 DCT scale (%dx%d)", small.w, small.h);
	d2v_view_render(&v, &a, &small, 1024, 768, x1, NULL);
	d2v_view_render(&v, &a, &full, 1024, 768, x2, NULL);
	for (int i = 0; i < 3 * 224 * 224; i++)
		diff += abs(x1[i] - x2[i]);
	diff /= 3 * 224 * 224;
	T_OK(diff < 1.5, "the crop from the 1/2-scale decode matches the "
	    "full decode (mean difference %.3f)", diff);
	d2v_image_free(&small);
	d2v_jpeg_decode(dec, jpg, len, 0, 90, 90, NULL, &small, NULL);
	T_OK(small.w == 128 && small.h == 96, "1/8 scale when 90x90 is "
	    "enough (%dx%d)", small.w, small.h);
	d2v_image_free(&small);
	d2v_jpeg_decode(dec, jpg, len, 0, 100, 100, NULL, &small, NULL);
	T_OK(small.w == 256 && small.h == 192, "1/4 scale when 1/8 would "
	    "give less than 100x100 (%dx%d)", small.w, small.h);
	d2v_image_free(&small);
	d2v_image_free(&full);
	d2v_image_free(&im);
	tjFree(jpg);
	d2v_jpeg_free(dec);
	free(x1);
	free(x2);
}

static void
test_jpeg_bad(void)
{
	d2v_image im, out;
	d2v_jpeg *dec;
	unsigned char *jpg, junk[4096];
	unsigned long len;
	d2v_err err = {0};
	d2v_rng r;
	d2v_box win = {40, 30, 100, 80};
	int rc, crashed_not = 1;

	d2v_jpeg_new(&dec, NULL);
	make_ramp(&im, 200, 150, 3);
	jpg = encode(&im, TJSAMP_420, 90, &len);
	rc = d2v_jpeg_decode(dec, jpg, len / 2, 0, 0, 0, &win, &out, &err);
	T_OK(rc == D2V_ETRUNC && strstr(err.msg, "truncated") != NULL &&
	    out.px == NULL, "a JPEG cut in half is truncated: %s", err.msg);
	rc = d2v_jpeg_decode(dec, jpg, 300, 0, 0, 0, NULL, &out, &err);
	T_OK(rc < 0, "a JPEG cut after its header fails: %s", err.msg);
	rc = d2v_jpeg_decode(dec, jpg, 2, 0, 0, 0, NULL, &out, &err);
	T_OK(rc == D2V_EFORMAT, "two bytes are not a JPEG: %s", err.msg);
	d2v_rng_seed(&r, 9, 0, 0);
	for (size_t i = 0; i < sizeof junk; i++)
		junk[i] = (unsigned char)d2v_rng_below(&r, 256);
	/* right after a failed header: TurboJPEG 2.1 would read this one's
	 * "header" from the first stray marker unless the decoder is reset */
	rc = d2v_jpeg_decode(dec, junk, sizeof junk, 0, 0, 0, NULL, &out, &err);
	T_OK(rc == D2V_EFORMAT && strstr(err.msg, "not a JPEG") != NULL,
	    "random bytes are not a JPEG: %s", err.msg);
	/* flipped bytes after the header: an error or a decoded image,
	 * never a crash (the sanitizer build checks the memory) */
	for (int t = 0; t < 50; t++) {
		unsigned char *bad = malloc(len);

		memcpy(bad, jpg, len);
		for (int k = 0; k < 8; k++)
			bad[300 + d2v_rng_below(&r, len - 300)] ^=
			    (unsigned char)(1 + d2v_rng_below(&r, 255));
		rc = d2v_jpeg_decode(dec, bad, len, 0, 0, 0, NULL, &out, &err);
		crashed_not &= rc == 0 ? out.w == 200 : out.px == NULL;
		d2v_image_free(&out);
		/* and a window of it (the file still ends with its marker) */
		rc = d2v_jpeg_decode(dec, bad, len, 0, 0, 0, &win, &out, &err);
		crashed_not &= rc == 0 ? out.w < 200 && out.fw == 200 :
		    out.px == NULL && err.msg[0] != 0;
		d2v_image_free(&out);
		free(bad);
	}
	T_OK(crashed_not, "50 JPEGs with flipped bytes decode or fail cleanly, "
	    "whole and as a window");
	d2v_image_free(&im);
	tjFree(jpg);
	d2v_jpeg_free(dec);
}

static void
test_jitter(void)
{
	uint8_t x[3 * 4] = {10, 100, 200, 250, 20, 120, 220, 240, 30, 140,
	    160, 255};
	uint8_t y[12];
	d2v_view v = {.factor = {0.5, 1, 1}, .order = {0, 1, 2}};
	int ok = 1;

	memcpy(y, x, sizeof x);
	d2v_image_jitter(y, 3, 4, &v);
	for (int i = 0; i < 12; i++)
		ok &= y[i] == x[i] / 2;
	T_OK(ok, "brightness 0.5 halves every pixel");
	memcpy(y, x, sizeof x);
	v = (d2v_view){.factor = {1, 1, 0}, .order = {2, 0, 1}};
	d2v_image_jitter(y, 3, 4, &v);
	ok = 1;
	for (int i = 0; i < 4; i++)
		ok &= y[i] == y[4 + i] && y[i] == y[8 + i];
	T_OK(ok, "saturation 0 makes the image grey");
	memcpy(y, x, sizeof x);
	v = (d2v_view){.factor = {1, 0, 1}, .order = {1, 2, 0}};
	d2v_image_jitter(y, 3, 4, &v);
	ok = 1;
	for (int i = 1; i < 12; i++)
		ok &= y[i] == y[0];
	T_OK(ok, "contrast 0 makes every pixel the mean grey (%d)", y[0]);
	memcpy(y, x, sizeof x);
	v = (d2v_view){.factor = {2, 1, 1}, .order = {0, 1, 2}};
	d2v_image_jitter(y, 3, 4, &v);
	T_OK(y[0] == 20 && y[2] == 255, "brightness 2 doubles and clips");
}

static void
test_render_channels(void)
{
	d2v_augment a;
	d2v_image grey, rgb;
	d2v_view v;
	d2v_rng r;
	uint8_t out[3 * 8 * 8];
	int ok = 1;

	d2v_augment_defaults(&a);
	a.size = 8;
	a.crop = D2V_CROP_NONE;
	a.flip = 0;
	a.channels = 3;
	make_ramp(&grey, 8, 8, 1);
	d2v_rng_seed(&r, 1, 0, 0);
	d2v_view_draw(&v, &a, 8, 8, &r);
	d2v_view_render(&v, &a, &grey, 8, 8, out, NULL);
	for (int i = 0; i < 64; i++)
		ok &= out[i] == grey.px[i] && out[64 + i] == grey.px[i] &&
		    out[128 + i] == grey.px[i];
	T_OK(ok, "--channels 3 copies a grey image into three planes");
	a.channels = 1;
	make_ramp(&rgb, 8, 8, 3);
	d2v_view_render(&v, &a, &rgb, 8, 8, out, NULL);
	T_OK(out[63] == (255 * 19595 + 255 * 38470 + 255 * 7471 + 0x8000) >> 16
	    && out[0] == 0, "--channels 1 turns RGB into luma");
	d2v_image_free(&grey);
	d2v_image_free(&rgb);
}

/* A window (d2v_view_region's, or any box) decodes to exactly the pixels
 * of the whole decode it covers, at every DCT scale, for 4:2:0, 4:2:2,
 * 4:4:4, 4:4:0, 4:1:1, grey and a progressive file, and views render from
 * it byte for byte as from the whole image. */
static void
test_jpeg_window(void)
{
	static const struct { int samp, flags, w, h; } fs[] = {
		{TJSAMP_420, 0, 500, 375}, {TJSAMP_422, 0, 333, 250},
		{TJSAMP_444, 0, 500, 375}, {TJSAMP_GRAY, 0, 500, 375},
		{TJSAMP_440, 0, 375, 500}, {TJSAMP_411, 0, 501, 377},
		{TJSAMP_420, TJFLAG_PROGRESSIVE, 500, 375},
	};
	static const int need[][2] = {{0, 0}, {100, 80}, {60, 50}, {20, 20}};
	d2v_jpeg *dec;
	d2v_rng r;
	d2v_augment a;
	int bad_px = 0, bad_cover = 0, bad_view = 0, windows = 0, cases = 0;
	int views = 0;
	uint8_t *x1 = malloc(3 * 64 * 64), *x2 = malloc(3 * 64 * 64);

	d2v_jpeg_new(&dec, NULL);
	d2v_rng_seed(&r, 7, 0, 0);
	d2v_augment_defaults(&a);
	a.size = 64;
	for (size_t si = 0; si < sizeof fs / sizeof fs[0]; si++) {
		d2v_image im, full, win;
		unsigned char *jpg;
		unsigned long len;
		int W = fs[si].w, H = fs[si].h;
		int c = fs[si].samp == TJSAMP_GRAY ? 1 : 3;

		make_noise(&im, W, H, c, (unsigned)si);
		for (size_t i = 0; i < (size_t)W * H * c; i++) /* smoother */
			im.px[i] = (uint8_t)((im.px[i] + (i % 97) * 2) / 2);
		jpg = encode_flags(&im, fs[si].samp, 90, fs[si].flags, &len);
		for (int ni = 0; ni < 4; ni++) {
			d2v_jpeg_decode(dec, jpg, len, 0, need[ni][0], need[ni][1],
			    NULL, &full, NULL);
			for (int t = 0; t < 25; t++) {
				d2v_box b;
				double fx = (double)full.w / W, fy = (double)full.h / H;

				if (t < 20) {  /* random boxes, some at the edges */
					b.x = d2v_rng_uniform(&r) * W * 0.9;
					b.y = d2v_rng_uniform(&r) * H * 0.9;
					b.w = 1 + d2v_rng_uniform(&r) * (W - b.x);
					b.h = 1 + d2v_rng_uniform(&r) * (H - b.y);
					if (t % 5 == 0)
						b.x = 0;
					if (t % 7 == 0)
						b.y = 0;
				} else {  /* the region of a random view */
					d2v_view v;

					a.crop = t == 20 ? D2V_CROP_CENTER : D2V_CROP_RANDOM;
					d2v_view_draw(&v, &a, W, H, &r);
					d2v_view_region(&v, &a, W, H, &b);
				}
				cases++;
				if (d2v_jpeg_decode(dec, jpg, len, 0, need[ni][0],
				    need[ni][1], &b, &win, NULL) < 0) {
					bad_px++;
					continue;
				}
				windows += win.w < full.w || win.h < full.h;
				if (win.fw != full.w || win.fh != full.h ||
				    win.ox > floor(b.x * fx) || win.oy > floor(b.y * fy) ||
				    win.ox + win.w < ceil(fmin(b.x + b.w, W) * fx) ||
				    win.oy + win.h < ceil(fmin(b.y + b.h, H) * fy) - 0)
					bad_cover++;
				for (int y = 0; y < win.h && win.oy + y < full.h; y++)
					if (memcmp(win.px + (size_t)y * win.w * c,
					    full.px + ((size_t)(win.oy + y) * full.w +
					    win.ox) * c, (size_t)win.w * c) != 0) {
						bad_px++;
						break;
					}
				d2v_image_free(&win);
			}
			for (int t = 0; t < 10; t++) {  /* whole views */
				d2v_view v;
				d2v_box b;

				a.crop = t < 2 ? D2V_CROP_CENTER : D2V_CROP_RANDOM;
				d2v_view_draw(&v, &a, W, H, &r);
				d2v_view_region(&v, &a, W, H, &b);
				d2v_jpeg_decode(dec, jpg, len, 0, need[ni][0],
				    need[ni][1], &b, &win, NULL);
				d2v_view_render(&v, &a, &win, W, H, x1, NULL);
				d2v_view_render(&v, &a, &full, W, H, x2, NULL);
				bad_view += memcmp(x1, x2, (size_t)c * 64 * 64) != 0;
				views++;
				d2v_image_free(&win);
			}
			d2v_image_free(&full);
		}
		d2v_image_free(&im);
		tjFree(jpg);
	}
	for (int k = 0; k < 2; k++) {
		/* grey from a colour file (the luma), colour from a grey one */
		d2v_image im, full, win;
		unsigned char *jpg;
		unsigned long len;
		d2v_box b = {101.5, 77.25, 200, 150};
		int c = k == 0 ? 1 : 3;

		make_noise(&im, 320, 240, k == 0 ? 3 : 1, 9);
		jpg = encode(&im, TJSAMP_420, 90, &len);
		d2v_jpeg_decode(dec, jpg, len, c, 0, 0, NULL, &full, NULL);
		d2v_jpeg_decode(dec, jpg, len, c, 0, 0, &b, &win, NULL);
		cases++;
		windows += win.w < full.w;
		for (int y = 0; y < win.h; y++)
			bad_px += win.c != c || memcmp(win.px + (size_t)y * win.w * c,
			    full.px + ((size_t)(win.oy + y) * full.w + win.ox) * c,
			    (size_t)win.w * c) != 0;
		d2v_image_free(&im);
		d2v_image_free(&full);
		d2v_image_free(&win);
		tjFree(jpg);
	}
	T_OK(bad_px == 0 && bad_cover == 0 && windows > cases / 2,
	    "%d JPEG windows (%d smaller than the image; grey from colour and colour from grey among them) equal the whole "
	    "decode where they cover it and cover what was asked (%d differ, "
	    "%d short)", cases, windows, bad_px, bad_cover);
	T_OK(bad_view == 0 && views > 200, "%d views render from their window "
	    "exactly as from the whole image (%d differ)", views, bad_view);
	free(x1);
	free(x2);
	d2v_jpeg_free(dec);
}

int
main(void)
{
	test_resample_twin();
	test_resample_identity();
	test_center_crop_pixels();
	test_random_crop();
	test_jpeg_roundtrip();
	test_jpeg_channels();
	test_jpeg_cmyk();
	test_dct_scaling();
	test_jpeg_window();
	test_jpeg_bad();
	test_jitter();
	test_render_channels();
	return T_DONE();
}
