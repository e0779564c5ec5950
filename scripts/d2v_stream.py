"""d2v_stream: read and write d2v tensor streams from Python (msgpack + numpy).

A stream (d2v-stream(5)) is a concatenation of msgpack maps: a header, one map
per record, a trailer.  Tensors are maps {"dtype", "shape", "data"} with
little-endian row-major bytes.

    import d2v_stream
    with open("masked.d2v", "rb") as f:
        for kind, obj in d2v_stream.read(f):
            if kind == "record":
                x = obj["x"]            # numpy array
                mask = obj.get("mask")  # numpy uint8 [M, N]

    with open("out.d2v", "wb") as f:
        w = d2v_stream.Writer(f, modality="image", stages=["tokenize"],
                              meta={"tokenize": {"size": 28}})
        w.record("img:0", x=np.zeros((1, 28, 28), np.uint8), label=3)
        w.close()                        # writes the trailer

Run as a script it prints a summary: python3 d2v_stream.py FILE.d2v
bf16 arrays come back as uint16 bit patterns with the attribute-free helper
bf16_to_f32() to widen them; numpy has no bfloat16.
"""

import sys

import msgpack
import numpy as np

VERSION = 1

_DTYPES = {
    "u8": np.dtype("<u1"),
    "i32": np.dtype("<i4"),
    "i64": np.dtype("<i8"),
    "f16": np.dtype("<f2"),
    "bf16": np.dtype("<u2"),  # bit patterns
    "f32": np.dtype("<f4"),
}
_NAMES = {np.dtype("uint8"): "u8", np.dtype("int32"): "i32",
          np.dtype("int64"): "i64", np.dtype("float16"): "f16",
          np.dtype("float32"): "f32"}


class StreamError(Exception):
    """A malformed or truncated stream."""


class BF16(np.ndarray):
    """A uint16 array that holds bfloat16 bit patterns (written as bf16)."""


def bf16_to_f32(a):
    """Widens bf16 bit patterns (uint16) to float32."""
    return (np.asarray(a, np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(a):
    """Rounds float32 to bf16 bit patterns (nearest even), as a BF16 array."""
    f = np.asarray(a, np.float32)
    x = f.view(np.uint32).astype(np.uint64)
    nan = np.isnan(f)
    r = ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16)
    r[nan] = 0x7FC0
    return r.view(BF16)


def decode_tensor(m):
    """Turns a tensor map into a numpy array (copy, writable)."""
    if set(m) != {"dtype", "shape", "data"}:
        raise StreamError("tensor must have exactly dtype, shape and data")
    dt = _DTYPES.get(m["dtype"])
    if dt is None:
        raise StreamError("unknown dtype %r" % (m["dtype"],))
    shape = tuple(int(s) for s in m["shape"])
    if len(shape) > 8 or any(s < 0 for s in shape):
        raise StreamError("bad shape %r" % (shape,))
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n * dt.itemsize != len(m["data"]):
        raise StreamError("data is %d bytes, shape %r of %s needs %d"
                          % (len(m["data"]), shape, m["dtype"], n * dt.itemsize))
    a = np.frombuffer(m["data"], dt).reshape(shape).copy()
    return a.view(BF16) if m["dtype"] == "bf16" else a


def encode_tensor(a):
    """Turns a numpy array into a tensor map."""
    if isinstance(a, BF16):
        name = "bf16"
        a = np.asarray(a, np.uint16)
    else:
        a = np.asarray(a)
        name = _NAMES.get(a.dtype.newbyteorder("="))
        if name is None:
            raise TypeError("no d2v dtype for numpy %s" % a.dtype)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # keeps rank 0
    return {"dtype": name, "shape": list(a.shape), "data": a.tobytes("C")}


def _is_tensor(v):
    return isinstance(v, dict) and "dtype" in v


def read(f):
    """Yields ("header", dict), ("record", dict) and ("end", dict) tuples.

    Record tensors are numpy arrays; other values are as msgpack gives them.
    Raises StreamError for malformed input and for a stream that ends without
    a trailer ("truncated"), after yielding every whole record.
    """
    unp = msgpack.Unpacker(f, raw=False, max_buffer_size=2**31 - 1,
                           strict_map_key=True)
    state = "start"
    count = 0
    while True:
        try:
            obj = unp.unpack()
        except msgpack.OutOfData:
            if unp.tell() != _consumed(f, unp):
                raise StreamError("truncated: input ends inside an object")
            if state == "start":
                raise StreamError("empty input: no stream header")
            if state == "stream":
                raise StreamError("truncated: input ends without a trailer")
            return
        except (ValueError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as e:
            raise StreamError("not msgpack: %s" % e)
        if not isinstance(obj, dict):
            raise StreamError("object is not a map")
        t = obj.get("type")
        if t == "header":
            if obj.get("d2v") != VERSION:
                raise StreamError("unknown stream format version")
            if state == "stream":
                raise StreamError("a header inside a stream")
            state, count = "stream", 0
            yield "header", obj
        elif state != "stream":
            raise StreamError("stream does not start with a header")
        elif t == "end":
            if obj.get("records") != count:
                raise StreamError("trailer says %r records, the stream had %d"
                                  % (obj.get("records"), count))
            state = "end"
            yield "end", obj
        elif t == "record":
            rec = {k: decode_tensor(v) if _is_tensor(v) else v
                   for k, v in obj.items() if k != "type"}
            count += 1
            yield "record", rec
        else:
            raise StreamError("unknown object type %r" % (t,))


def _consumed(f, unp):
    # msgpack.Unpacker buffers internally; at EOF a partial object leaves
    # bytes in its buffer.  tell() counts bytes of complete objects only,
    # so compare with how much of the file was read.
    try:
        return f.tell()
    except (OSError, AttributeError, ValueError):
        return unp.tell()


def records(f):
    """Yields only the records of a stream (dicts with numpy tensors)."""
    for kind, obj in read(f):
        if kind == "record":
            yield obj


class Writer:
    """Writes a stream: the header at construction, then records, then
    close() writes the trailer (the file itself is not closed)."""

    def __init__(self, f, modality, stages=(), meta=None, **extra):
        self.f = f
        self.n = 0
        self.packer = msgpack.Packer(use_bin_type=True)
        hdr = {"d2v": VERSION, "type": "header", "modality": modality,
               "stages": list(stages), "meta": dict(meta or {})}
        hdr.update(extra)
        f.write(self.packer.pack(hdr))

    def record(self, id, **fields):
        rec = {"type": "record", "id": str(id)}
        for k, v in fields.items():
            rec[k] = encode_tensor(v) if isinstance(v, np.ndarray) else v
        self.f.write(self.packer.pack(rec))
        self.n += 1

    def close(self):
        self.f.write(self.packer.pack({"type": "end", "records": self.n}))
        self.f.flush()


def _main(argv):
    if len(argv) != 2:
        print("usage: d2v_stream.py FILE.d2v", file=sys.stderr)
        return 2
    with open(argv[1], "rb") if argv[1] != "-" else sys.stdin.buffer as f:
        try:
            for kind, obj in read(f):
                if kind == "record":
                    parts = ["%s %s%s" % (k, v.dtype, list(v.shape))
                             if isinstance(v, np.ndarray) else "%s=%r" % (k, v)
                             for k, v in obj.items()]
                    print("record", " ".join(parts))
                else:
                    print(kind, {k: v for k, v in obj.items() if k != "type"})
        except StreamError as e:
            print("d2v_stream.py: %s: %s" % (argv[1], e), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
