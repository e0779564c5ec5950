// spm.cc - the extern "C" shim over sentencepiece; see spm.h.
#include "input/spm.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>

struct d2v_spm {
	sentencepiece::SentencePieceProcessor sp;
};

extern "C" int
d2v_spm_load(d2v_spm **mp, const void *buf, size_t len, d2v_err *err)
{
	*mp = nullptr;
	try {
		d2v_spm *m = new d2v_spm;
		auto st = m->sp.LoadFromSerializedProto(
		    std::string_view(static_cast<const char *>(buf), len));

		if (!st.ok()) {
			delete m;
			return d2v_err_set(err, D2V_EFORMAT, "not a "
			    "sentencepiece model: %s", st.ToString().c_str());
		}
		*mp = m;
		return 0;
	} catch (const std::bad_alloc &) {
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	} catch (const std::exception &e) {
		return d2v_err_set(err, D2V_EFORMAT, "sentencepiece: %s",
		    e.what());
	}
}

extern "C" void
d2v_spm_free(d2v_spm *m)
{
	delete m;
}

extern "C" int d2v_spm_size(const d2v_spm *m) { return m->sp.GetPieceSize(); }
extern "C" int d2v_spm_bos(const d2v_spm *m) { return m->sp.bos_id(); }
extern "C" int d2v_spm_eos(const d2v_spm *m) { return m->sp.eos_id(); }
extern "C" int d2v_spm_pad(const d2v_spm *m) { return m->sp.pad_id(); }
extern "C" int d2v_spm_unk(const d2v_spm *m) { return m->sp.unk_id(); }

extern "C" int
d2v_spm_piece_id(const d2v_spm *m, const char *piece)
{
	try {
		int id = m->sp.PieceToId(piece);

		return m->sp.IdToPiece(id) == piece ? id : -1;
	} catch (...) {
		return -1;
	}
}

extern "C" int
d2v_spm_encode(const d2v_spm *m, const char *text, size_t len, int32_t **ids,
    int64_t *n, d2v_err *err)
{
	*ids = nullptr;
	*n = 0;
	try {
		std::vector<int> v;
		auto st = m->sp.Encode(std::string_view(text, len), &v);

		if (!st.ok())
			return d2v_err_set(err, D2V_EFORMAT, "sentencepiece: %s",
			    st.ToString().c_str());
		*ids = static_cast<int32_t *>(std::malloc(
		    (v.size() ? v.size() : 1) * sizeof(int32_t)));
		if (*ids == nullptr)
			return d2v_err_set(err, D2V_ENOMEM, "out of memory");
		for (size_t i = 0; i < v.size(); i++)
			(*ids)[i] = v[i];
		*n = static_cast<int64_t>(v.size());
		return 0;
	} catch (const std::bad_alloc &) {
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	} catch (const std::exception &e) {
		return d2v_err_set(err, D2V_EFORMAT, "sentencepiece: %s",
		    e.what());
	}
}

extern "C" int
d2v_spm_decode(const d2v_spm *m, const int32_t *ids, int64_t n, char **text,
    d2v_err *err)
{
	*text = nullptr;
	for (int64_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= m->sp.GetPieceSize())
			return d2v_err_set(err, D2V_EINVAL, "id %d at %lld is "
			    "not in the vocabulary of %d", (int)ids[i],
			    (long long)i, m->sp.GetPieceSize());
	try {
		std::vector<int> v(ids, ids + n);
		std::string s;
		auto st = m->sp.Decode(v, &s);

		if (!st.ok())
			return d2v_err_set(err, D2V_EFORMAT, "sentencepiece: %s",
			    st.ToString().c_str());
		if ((*text = static_cast<char *>(std::malloc(s.size() + 1))) ==
		    nullptr)
			return d2v_err_set(err, D2V_ENOMEM, "out of memory");
		std::memcpy(*text, s.c_str(), s.size() + 1);
		return 0;
	} catch (const std::bad_alloc &) {
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	} catch (const std::exception &e) {
		return d2v_err_set(err, D2V_EFORMAT, "sentencepiece: %s",
		    e.what());
	}
}
