#!/usr/bin/python3
"""mask_ref.py -> mask_ref.json: statistics of the reference's masking.

The masking routines of the reference (DATA2VEC.md §4), written here the way
the reference writes them - torch for compute_block_mask_2d/1d, numpy for
compute_mask_indices and MaskTokensDataset, Python's random for BEiT's
MaskingGenerator - are run over many rows, and a few statistics of the
masks they give are stored with their standard deviations.
tests/unit/test_mask.c computes the same statistics over d2v's masks and
requires each mean to agree within 5 standard errors.  (The random numbers
differ, so the masks cannot be compared one by one; their distributions
can.)

Statistics, per row (a mask row of N tokens, 1 = masked):
  count      masked tokens
  frac       count / N
  win3       2-D: the share of visible tokens inside some fully visible 3x3
             window of the grid
  border     2-D: visible tokens on the outer ring of the grid
  isolated   2-D: visible tokens with no visible 4-neighbour
  runs       1-D: maximal runs of masked tokens
  long5      1-D: the share of masked tokens in runs of at least 5
  edges      1-D: mask[0] + mask[N-1]
  comps      2-D: 4-connected components of masked patches
  big16      2-D: the share of masked patches in components of >= 16
  full       block: 1 when count == the target (120)
  bert_*     bert: the share of selected tokens that became <mask>, stayed,
             or became another id (over all selected tokens of all rows)
span_499_m8 holds per-sample means over the 8 copies (the copies of a sample
share one count, so single rows are not independent).

Run with /usr/bin/python3 (numpy, torch); `make check-ref` runs it.
"""

import json
import math
import os
import random

import numpy as np
import torch

ROWS = 20000
HERE = os.path.dirname(os.path.abspath(__file__))


# ---- the reference routines ------------------------------------------------

def compute_block_mask_2d(shape, mask_prob, mask_length, mask_prob_adjust=0,
                          inverse_mask=False):
    """data_utils.py compute_block_mask_2d; require_same_masks True,
    expand_adjcent False, mask_dropout 0, non_overlapping False."""
    assert mask_length > 1
    B, L = shape
    d = int(L ** 0.5)
    if inverse_mask:
        mask_prob = 1 - mask_prob
    mask = torch.zeros((B, d, d))
    mask_inds = torch.randint(
        0, L, size=(B, int(L * ((mask_prob + mask_prob_adjust) / mask_length ** 2) * (1 + 0))))
    mask.view(B, -1).scatter_(1, mask_inds, 1)
    centers = mask.nonzero(as_tuple=True)
    inds = ([], [], [])
    offset = mask_length // 2
    for i in range(mask_length):
        for j in range(mask_length):
            inds[0].append(centers[0])
            inds[1].append(centers[1] + i - offset)
            inds[2].append(centers[2] + j - offset)
    i0 = torch.cat(inds[0])
    i1 = torch.cat(inds[1]).clamp_(min=0, max=d - 1)
    i2 = torch.cat(inds[2]).clamp_(min=0, max=d - 1)
    mask[(i0, i1, i2)] = 1
    mask = mask.reshape(B, -1)
    n_masks = mask.sum(dim=-1)
    final_target_len = int(L * mask_prob)
    for i in range(len(mask)):
        n = n_masks[i]
        m = mask[i]
        if n > final_target_len:
            m[torch.multinomial(m, int(n - final_target_len), replacement=False)] = 0
        elif n < final_target_len:
            m[torch.multinomial(1 - m, int(final_target_len - n), replacement=False)] = 1
    if inverse_mask:
        mask = 1 - mask
    return mask


def compute_block_mask_1d(shape, mask_prob, mask_length, mask_prob_adjust=0,
                          inverse_mask=False):
    """data_utils.py compute_block_mask_1d, as above."""
    B, L = shape
    if inverse_mask:
        mask_prob = 1 - mask_prob
    mask = torch.zeros((B, L))
    mask_inds = torch.randint(
        0, L, size=(B, int(L * ((mask_prob + mask_prob_adjust) / mask_length) * (1 + 0))))
    mask.view(B, -1).scatter_(1, mask_inds, 1)
    centers = mask.nonzero(as_tuple=True)
    inds = ([], [])
    offset = mask_length // 2
    for i in range(mask_length):
        inds[0].append(centers[0])
        inds[1].append(centers[1] + i - offset)
    i0 = torch.cat(inds[0])
    i1 = torch.cat(inds[1]).clamp_(min=0, max=L - 1)
    mask[(i0, i1)] = 1
    n_masks = mask.sum(dim=-1)
    final_target_len = int(L * mask_prob)
    for i in range(len(mask)):
        n = n_masks[i]
        m = mask[i]
        if n > final_target_len:
            m[torch.multinomial(m, int(n - final_target_len), replacement=False)] = 0
        elif n < final_target_len:
            m[torch.multinomial(1 - m, int(final_target_len - n), replacement=False)] = 1
    if inverse_mask:
        mask = 1 - mask
    return mask


def compute_mask_indices(shape, mask_prob, mask_length, min_masks, rng):
    """data_utils.py compute_mask_indices as data2vec_audio apply_mask calls
    it: no padding, static lengths, no_overlap False, require_same_masks
    True, add_masks False, mask_dropout 0, idc_select_ver 1, num_mask_ver 2."""
    bsz, all_sz = shape
    mask = np.full((bsz, all_sz), False)
    mask_idcs = []
    for i in range(bsz):
        sz = all_sz
        num_mask = int(mask_prob * sz / float(mask_length) + rng.random())
        num_mask = max(min_masks, num_mask)
        lengths = np.full(num_mask, mask_length)
        min_len = min(lengths)
        if sz - min_len <= num_mask:
            min_len = sz - num_mask - 1
        mask_idc = rng.choice(sz - min_len, num_mask, replace=False)
        mask_idc = np.asarray([mask_idc[j] + offset for j in range(len(mask_idc))
                               for offset in range(lengths[j])])
        mask_idc = np.unique(mask_idc[mask_idc < sz])
        assert len(mask_idc) < sz, "the entire sequence is masked"
        mask_idcs.append(mask_idc)
    target_len = min([len(m) for m in mask_idcs])
    for i, mask_idc in enumerate(mask_idcs):
        if len(mask_idc) > target_len:
            mask_idc = rng.choice(mask_idc, target_len, replace=False)
        mask[i, mask_idc] = True
    return mask


class MaskingGenerator:
    """beit/masking_generator.py."""

    def __init__(self, input_size, num_masking_patches, min_num_patches=4,
                 max_num_patches=None, min_aspect=0.3, max_aspect=None):
        self.height, self.width = input_size
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for attempt in range(10):
            target_area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self):
        mask = np.zeros(shape=(self.height, self.width), dtype=np.int64)
        mask_count = 0
        while mask_count < self.num_masking_patches:
            max_mask_patches = self.num_masking_patches - mask_count
            max_mask_patches = min(max_mask_patches, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            mask_count += delta
        return mask


def mask_tokens(item, vocab_size, nspecial_ids, mask_idx, mask_prob,
                leave_unmasked_prob, random_token_prob, mask_multiple_length):
    """mask_tokens_dataset.py MaskTokensDataset.__getitem__ (np.random);
    returns (selected mask, new item).  Replacement weights: 1 for every id
    but the specials (fairseq zeroes its nspecial; here the given ids)."""
    sz = len(item)
    mask = np.full(sz, False)
    num_mask = int(mask_prob * sz / float(mask_multiple_length) + np.random.rand())
    mask_idc = np.random.choice(sz, num_mask, replace=False)
    mask_idc = np.asarray([mask_idc[j] + offset for j in range(len(mask_idc))
                           for offset in range(mask_multiple_length)], dtype=np.int64)
    mask_idc = mask_idc[mask_idc < len(mask)]
    mask[mask_idc] = True
    selected = mask.copy()
    rand_or_unmask_prob = random_token_prob + leave_unmasked_prob
    unmask = rand_mask = None
    if rand_or_unmask_prob > 0.0:
        rand_or_unmask = mask & (np.random.rand(sz) < rand_or_unmask_prob)
        if random_token_prob == 0.0:
            unmask = rand_or_unmask
        elif leave_unmasked_prob == 0.0:
            rand_mask = rand_or_unmask
        else:
            unmask_prob = leave_unmasked_prob / rand_or_unmask_prob
            decision = np.random.rand(sz) < unmask_prob
            unmask = rand_or_unmask & decision
            rand_mask = rand_or_unmask & (~decision)
    if unmask is not None:
        mask = mask ^ unmask
    new_item = np.copy(item)
    new_item[mask] = mask_idx
    if rand_mask is not None:
        num_rand = rand_mask.sum()
        if num_rand > 0:
            weights = np.ones(vocab_size)
            weights[nspecial_ids] = 0
            new_item[rand_mask] = np.random.choice(vocab_size, num_rand,
                                                   p=weights / weights.sum())
    return selected, new_item


# ---- statistics (tests/unit/test_mask.c computes the same) -----------------

def stats2d(rows, d):
    out = {"count": [], "win3": [], "border": [], "isolated": [], "comps": [], "big16": []}
    for r in rows:
        g = r.reshape(d, d).astype(np.int64)
        vis = 1 - g
        nvis = vis.sum()
        inwin = np.zeros_like(vis)
        for y in range(d - 2):
            for x in range(d - 2):
                if vis[y:y + 3, x:x + 3].all():
                    inwin[y:y + 3, x:x + 3] = 1
        ring = vis.copy()
        ring[1:-1, 1:-1] = 0
        pad = np.pad(vis, 1)
        nb = pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
        # 4-connected components of masked patches
        seen = np.zeros_like(g)
        sizes = []
        for y in range(d):
            for x in range(d):
                if g[y, x] and not seen[y, x]:
                    stack, n = [(y, x)], 0
                    seen[y, x] = 1
                    while stack:
                        cy, cx = stack.pop()
                        n += 1
                        for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                            if 0 <= ny < d and 0 <= nx < d and g[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = 1
                                stack.append((ny, nx))
                    sizes.append(n)
        out["count"].append(g.sum())
        out["win3"].append((inwin * vis).sum() / nvis if nvis else 0.0)
        out["border"].append(ring.sum())
        out["isolated"].append(((nb == 0) & (vis == 1)).sum())
        out["comps"].append(len(sizes))
        out["big16"].append(sum(s for s in sizes if s >= 16) / g.sum() if g.sum() else 0.0)
    return out


def stats1d(rows):
    out = {"count": [], "frac": [], "runs": [], "long5": [], "edges": []}
    for r in rows:
        r = np.asarray(r, np.int64)
        n = len(r)
        runs, long5, cur = 0, 0, 0
        for v in list(r) + [0]:
            if v:
                cur += 1
            else:
                if cur:
                    runs += 1
                    if cur >= 5:
                        long5 += cur
                cur = 0
        c = r.sum()
        out["count"].append(c)
        out["frac"].append(c / n)
        out["runs"].append(runs)
        out["long5"].append(long5 / c if c else 0.0)
        out["edges"].append(r[0] + r[-1])
    return out


def summary(st, keys, group=1):
    """Mean, sd and count of each statistic; with group > 1, of the means of
    consecutive groups of rows (the copies of one sample, which are not
    independent after the span equalisation)."""
    res = {}
    for k in keys:
        v = np.asarray(st[k], np.float64)
        v = v.reshape(-1, group).mean(axis=1)
        res[k] = {"mean": float(v.mean()), "sd": float(v.std()), "n": int(len(v))}
    return res


def main():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    rng = np.random.default_rng(1)
    ref = {"rows": ROWS}

    m = compute_block_mask_2d((ROWS, 196), 0.8, 3, 0.07, inverse_mask=True).numpy()
    ref["inverse_block_base"] = summary(stats2d(m, 14), ["count", "win3", "border", "isolated"])
    m = compute_block_mask_2d((ROWS, 196), 0.75, 3, 0.10, inverse_mask=True).numpy()
    ref["inverse_block_large"] = summary(stats2d(m, 14), ["count", "win3", "border", "isolated"])

    m = compute_block_mask_1d((ROWS, 499), 0.5, 5, 0.05).numpy()
    ref["block1d_499"] = summary(stats1d(m), ["count", "runs", "long5", "edges"])
    m = compute_block_mask_1d((5 * ROWS, 40), 0.5, 5, 0.05).numpy()
    ref["block1d_40"] = summary(stats1d(m), ["count", "runs", "long5", "edges"])

    rows = np.concatenate([compute_mask_indices((1, 499), 0.65, 10, 1, rng) for _ in range(ROWS)])
    ref["span_499_m1"] = summary(stats1d(rows), ["frac", "runs", "edges"])
    rows = np.concatenate([compute_mask_indices((8, 499), 0.65, 10, 1, rng) for _ in range(ROWS // 8)])
    ref["span_499_m8"] = summary(stats1d(rows), ["frac", "runs"], group=8)
    rows = np.concatenate([compute_mask_indices((1, 30), 0.65, 10, 1, rng) for _ in range(ROWS)])
    ref["span_30_m1"] = summary(stats1d(rows), ["frac", "runs", "edges"])

    gen = MaskingGenerator((14, 14), 120, 16, 196, 0.3)
    rows = np.stack([gen().reshape(-1) for _ in range(ROWS // 4)])
    st = stats2d(rows, 14)
    st["full"] = [1.0 if c == 120 else 0.0 for c in st["count"]]
    ref["block_14"] = summary(st, ["count", "comps", "big16", "full"])

    sel = rep = keep = other = 0
    fracs = []
    for _ in range(ROWS // 8):
        item = np.random.randint(4, 999, size=512)
        item[0] = 0
        s, new = mask_tokens(item, 1000, [0, 1, 2, 3, 999], 999, 0.15, 0.1, 0.1, 1)
        fracs.append(s.mean())
        sel += s.sum()
        rep += (new[s] == 999).sum()
        keep += (new[s] == item[s]).sum()
        other += ((new[s] != 999) & (new[s] != item[s])).sum()
    ref["bert_512"] = {"frac": {"mean": float(np.mean(fracs)), "sd": float(np.std(fracs)),
                                "n": len(fracs)},
                      "selected": int(sel), "to_mask": rep / sel, "kept": keep / sel,
                      "random": other / sel}
    fracs = []
    for _ in range(ROWS // 8):
        item = np.random.randint(4, 999, size=512)
        s, new = mask_tokens(item, 1000, [0, 1, 2, 3, 999], 999, 0.35, 0.0, 0.0, 4)
        fracs.append(s.mean())
    ref["bert_span4_512"] = {"frac": {"mean": float(np.mean(fracs)), "sd": float(np.std(fracs)),
                                      "n": len(fracs)}}

    with open(os.path.join(HERE, "mask_ref.json"), "w") as f:
        json.dump(ref, f, indent=1, sort_keys=True)
        f.write("\n")
    print("mask_ref.json: " + ", ".join(
        "%s %s" % (k, v["frac"]["mean"] if "frac" in v else v.get("count", {}).get("mean"))
        for k, v in ref.items() if isinstance(v, dict)))


if __name__ == "__main__":
    main()
