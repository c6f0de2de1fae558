"""Records ggml's own dot products (libggml-cpu of llama-cpp-python, built -march=native on
the reference host) for the kernels in src/ops/qdot, on inputs both sides generate from a
seed, into ggml_vectors.json next to this file. src/ops/qdot/ggml_vectors.rs replays them.

Run: .venv/bin/python src/ops/qdot/testdata/ggml_vectors.py

Inputs (mirrored exactly in ggml_vectors.rs): a splitmix64 stream gives, in order, 8 weight
rows of `n_blocks` blocks each (random bytes, each f16 scale field replaced by
f16(f32(v) * 5e-5) with v = (next >> 40) % 2001 - 1000), then one activation row of
f32(v) * 1e-4 with v = (next >> 40) % 60001 - 30000. Activations are quantized by ggml's
quantize_row_q8_{0,1,K}; "vec" kernels are ggml_vec_dot_* per row, "gemv" kernels are the
repacked ggml_gemv_*_8x8 over the 8 rows (repacked here as repack.cpp's make_block_*x8).
"""
import ctypes, json, os, sys
import numpy as np
import llama_cpp

LIB = os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-cpu.so")
M64 = (1 << 64) - 1


class Rng:
    def __init__(self, seed):
        self.state = seed & M64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


# name: (block bytes, block elements, f16 offsets, activation type)
TYPES = {
    "q4_0": (18, 32, [0], "q8_0"),
    "q4_1": (20, 32, [0, 2], "q8_1"),
    "q5_0": (22, 32, [0], "q8_0"),
    "q5_1": (24, 32, [0, 2], "q8_1"),
    "q8_0": (34, 32, [0], "q8_0"),
    "q2_K": (84, 256, [80, 82], "q8_K"),
    "q3_K": (110, 256, [108], "q8_K"),
    "q4_K": (144, 256, [0, 2], "q8_K"),
    "q5_K": (176, 256, [0, 2], "q8_K"),
    "q6_K": (210, 256, [208], "q8_K"),
}
ACT_BYTES = {"q8_0": (34, 32), "q8_1": (36, 32), "q8_K": (292, 256)}


def inputs(typ, n_blocks, seed):
    size, qk, f16_at, _ = TYPES[typ]
    r = Rng(seed)
    rows = []
    for _ in range(8):
        row = bytearray()
        for _ in range(n_blocks):
            b = bytearray((r.next() >> 56) for _ in range(size))
            for at in f16_at:
                v = (r.next() >> 40) % 2001 - 1000
                h = np.array([np.float32(v) * np.float32(5e-5)], dtype=np.float32).astype(np.float16)
                b[at:at + 2] = h.tobytes()
            row += b
        rows.append(bytes(row))
    x = np.array([np.float32((r.next() >> 40) % 60001 - 30000) * np.float32(1e-4)
                  for _ in range(n_blocks * qk)], dtype=np.float32)
    return rows, x


def repack(typ, rows, n_blocks):
    """make_block_{q4_0,q4_K,q2_K}x8 with interleave 8, for one group of 8 rows."""
    size = TYPES[typ][0]
    out = bytearray()
    for x in range(n_blocks):
        blk = [rows[i][x * size:(x + 1) * size] for i in range(8)]
        if typ == "q4_0":
            out += b"".join(b[0:2] for b in blk)
            for i in range(16):
                src = blk[i % 8][2 + (i // 8) * 8: 2 + (i // 8) * 8 + 8]
                out += bytes(c ^ 0x88 for c in src)
        elif typ == "q4_K":
            out += b"".join(b[0:2] for b in blk) + b"".join(b[2:4] for b in blk)
            sc = [b[4:16] for b in blk]
            scales = bytearray(96)
            for half in range(2):
                for i in range(4):
                    if half == 0:
                        s = [sc[j][i] & 63 for j in range(8)]
                        m = [sc[j][i + 4] & 63 for j in range(8)]
                    else:
                        s = [((sc[j][i] & 192) >> 2) | (sc[j][i + 8] & 15) for j in range(8)]
                        m = [((sc[j][i + 4] & 192) >> 2) | ((sc[j][i + 8] & 240) >> 4) for j in range(8)]
                    o = i * 12 + 48 * half
                    for t in range(4):
                        scales[o + t] = ((s[t] & 63) + ((s[t + 4] & 48) << 2)) & 0xFF
                        scales[o + 4 + t] = ((m[t] & 63) + ((m[t + 4] & 48) << 2)) & 0xFF
                        scales[o + 8 + t] = ((s[t + 4] & 15) + ((m[t + 4] & 15) << 4)) & 0xFF
            out += scales
            for i in range(128):
                off = 16 + (i // 8) * 8
                out += blk[i % 8][off:off + 8]
        elif typ == "q2_K":
            out += b"".join(b[80:82] for b in blk) + b"".join(b[82:84] for b in blk)
            out += bytes(blk[(i % 16) // 2][(i // 16) * 2 + i % 2] for i in range(128))
            for i in range(64):
                off = 16 + (i // 8) * 8
                out += blk[i % 8][off:off + 8]
        else:
            raise ValueError(typ)
    return bytes(out)


def main():
    lib = ctypes.CDLL(LIB)
    lib.ggml_cpu_init()
    vp, i32, f32p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
    records = {}
    for typ, (size, qk, _, act) in TYPES.items():
        kinds = ["vec"] + (["gemv"] if typ in ("q4_0", "q4_K", "q2_K") else [])
        for kind in kinds:
            cases = []
            for n_blocks, seed in [(1, 11), (3, 12), (8, 13)]:
                rows, x = inputs(typ, n_blocks, seed)
                k = n_blocks * qk
                ab, aq = ACT_BYTES[act]
                yq = ctypes.create_string_buffer(k // aq * ab)
                getattr(lib, "quantize_row_" + act)(x.ctypes.data_as(vp), yq, ctypes.c_int64(k))
                out = np.zeros(8, dtype=np.float32)
                if kind == "vec":
                    fn = getattr(lib, f"ggml_vec_dot_{typ}_{act}")
                    for i, row in enumerate(rows):
                        s = ctypes.c_float()
                        fn(i32(k), ctypes.byref(s), ctypes.c_size_t(0), ctypes.c_char_p(row),
                           ctypes.c_size_t(0), yq, ctypes.c_size_t(0), i32(1))
                        out[i] = s.value
                else:
                    packed = ctypes.create_string_buffer(repack(typ, rows, n_blocks))
                    fn = getattr(lib, f"ggml_gemv_{typ}_8x8_{act}")
                    fn(i32(k), out.ctypes.data_as(f32p), ctypes.c_size_t(8), packed, yq, i32(1), i32(8))
                cases.append({"n_blocks": n_blocks, "seed": seed,
                              "bits": [int(b) for b in out.view(np.uint32)]})
            records[f"{typ} {kind}"] = cases
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ggml_vectors.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    print("wrote", path, file=sys.stderr)


if __name__ == "__main__":
    main()
