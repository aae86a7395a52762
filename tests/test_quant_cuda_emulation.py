"""CPU emulation of the CUDA int8 GEMM's data path (csrc/cuda/quant.cu, quant_gemm_fwd_kernel), compared
bit for bit with the cpu backend (csrc/cpu/quant.cpp) on odd sizes.

Three instances of the kernel are emulated: A gathered bytewise (any rows), A by cp.async (16-byte rows),
and the implicit-GEMM convolution (A's chunks copied from an NHWC image, padding taps set to a_zero),
the last compared with the cpu backend's conv_gemm. What is emulated, CTA by CTA and thread by thread: the cp.async chunk copies into the two shared
stages (zero-fill of partial and out-of-range chunks, commit groups, wait_group<N> visibility: a copy
lands in shared memory only when a wait retires its group), the byte-gather path of unaligned A, the
32-bit fragment loads from the padded shared tiles, mma.sync.m16n8k32.row.col.s32.u8.s8.s32 as the
PTX ISA's fragment tables define it (written here from the ISA text, independently of the kernel's
maps), the accumulator fragment map and the requantisation epilogue in the kernel's order and rounding.

The kernel's own index arithmetic is not re-typed here: every tile constant and fragment / chunk map
is read from csrc/cuda/quant.h, and every address, mask and loop bound of the kernel body is cut out
of csrc/cuda/quant.cu's text (regexes below, named as in the .cu) and evaluated. So an index bug
planted in the .cu or the header is a bug of this emulation too, and the comparison with the cpu
backend fails (test_planted_bugs_are_caught proves it for a set of plants). The epilogue's IEEE
operations cannot be evaluated from CUDA text; it is ported by hand and its source lines are required
verbatim (test_epilogue_source_is_the_emulated_one).

No GPU and no CUDA toolkit needed.
"""
from __future__ import annotations

import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pyimgcls.backends import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUANT_H = os.path.join(ROOT, "csrc", "cuda", "quant.h")
QUANT_CU = os.path.join(ROOT, "csrc", "cuda", "quant.cu")


def _read(path):
    with open(path) as f:
        return f.read()


def _norm(text):
    return " ".join(text.split())


def _py(expr):
    """A C++ integer expression of the kernel as Python (non-negative operands: / is floor division)."""
    expr = re.sub(r"static_cast<\w+>", "", expr)
    expr = re.sub(r"!(?!=)", " not ", expr)
    expr = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)u\b", r"\1", expr)      # unsigned literals
    return expr.replace("&&", " and ").replace("||", " or ").replace("/", "//")


# ----------------------------------------------------------------------------------- the header
def header_model(h_text):
    """Constants and index maps of quant.h, evaluated: {name: value or function}."""
    text = _norm(h_text)
    ns: dict = {}
    for decl in re.findall(r"inline constexpr int ([^;]+);", text):
        for part in decl.split(", "):
            name, expr = part.split(" = ", 1)
            ns[name] = eval(_py(expr), {}, dict(ns))
    for name, params, row, col in re.findall(
            r"PYIMGCLS_HD RowCol (\w+)\(([^)]*)\) \{ return \{(.+?), (.+?)\}; \}", text):
        args = ", ".join(p.split()[-1] for p in params.split(", "))
        ns[name] = eval(f"lambda {args}: _RC({_py(row)}, {_py(col)})", {"_RC": _RC, **ns})
    m = re.search(r"PYIMGCLS_HD int a_chunk_bytes\(int64_t m, int64_t M, int64_t k, int64_t K\) \{ (.+?) \}", text)
    assert m, "quant.h: a_chunk_bytes not found"
    assert m.group(1) == A_CHUNK_BYTES_CU, "quant.h a_chunk_bytes changed: port it to a_chunk_bytes() here"
    ns["a_chunk_bytes"] = a_chunk_bytes
    m = re.search(r"PYIMGCLS_HD int64_t packed_k\(int64_t K\) \{ return (.+?); \}", text)
    ns["packed_k"] = eval(f"lambda K: {_py(m.group(1))}", dict(ns))
    return ns


class _RC(SimpleNamespace):
    def __init__(self, row, col):
        super().__init__(row=row, col=col)


# quant.h a_chunk_bytes, ported (ternaries): the header's text must stay this one
A_CHUNK_BYTES_CU = "return m < M ? static_cast<int>(K - k < 0 ? 0 : (K - k > 16 ? 16 : K - k)) : 0;"


def a_chunk_bytes(m, M, k, K):
    return (0 if K - k < 0 else (16 if K - k > 16 else K - k)) if m < M else 0


# ----------------------------------------------------------------------------------- the kernel body
# name -> regex over the whitespace-normalised quant.cu; group 1 (and 2) are C++ expressions
KERNEL_EXPRS = {
    "warp_mn": r"const int wm = ([^;]+?), wn = ([^;]+?);",
    "m0": r"const int64_t m0 = static_cast<int64_t>\(blockIdx\.x\) \* (\w+);",
    "n0": r"const int64_t n0 = static_cast<int64_t>\(blockIdx\.y\) \* (\w+);",
    "ktiles": r"const int64_t ktiles = ([^;]+?);",
    "chunk_iters": r"for \(int i = 0; i < (\w+); \+\+i\) \{ const RowCol rc",
    "chunk": r"const RowCol rc = load_chunk\(([^;]+?)\);",
    "rows": r"const int64_t (m = [^;,]+?, n = [^;,]+?, k = [^;,]+?);",
    "dst_a": r"uint8_t\* const dst_a = ([^;]+?);",
    "nb": r"const int nb = ([^;]+?);",
    "src_a_vec": r"ptx::cp_async_16\(ptx::smem_addr\(dst_a\), nb > 0 \? ([^;]+?) : p\.a, nb\);",
    "src_a": r"const uint8_t\* src = ([^;]+?);",
    "gather": r"if \(j < nb\) v\[([^;]+?)\] \|= static_cast<uint32_t>\(__ldg\(src \+ j\)\) << \(([^;]+?)\);",
    "dst_w": r"uint8_t\* const dst_w = ([^;]+?);",
    "w_ok": r"const bool w_ok = ([^;]+?);",
    "src_w": r"w_ok \? ([^;]+?) : p\.w, w_ok \? 16 : 0\);",
    "first": r"load_stage\((\d+), (\d+)\); ptx::cp_async_commit\(\);",
    "next": r"if \(kt \+ 1 < ktiles\) load_stage\(static_cast<int>\(([^;]+?)\), ([^;]+?)\);",
    "wait": r"ptx::cp_async_wait<(\d+)>\(\);",
    "a_st": r"const uint8_t\* const a_st = ([^;]+?);",
    "w_st": r"const uint8_t\* const w_st = ([^;]+?);",
    "ks_loop": r"for \(int ks = 0; ks < ([^;]+?); \+\+ks\)",
    "a_frag": r"a\[mi\]\[r\] = \*reinterpret_cast<const uint32_t\*>\( ([^;]+?)\);",
    "b_frag": r"b\[ni\]\[r\] = \*reinterpret_cast<const uint32_t\*>\( ([^;]+?)\);",
    "out_m": r"const int64_t m = (m0 \+ wm .+?);",
    "out_n": r"const int64_t n = (n0 \+ wn .+?);",
    "store_if": r"if \((m < [^()]+?)\) requant_store\(p, m, n, acc\[mi\]\[ni\]\[r\]\);",
    "smem_w": r"uint8_t\* const Ws = ([^;]+?);",
    # kAConv (implicit-GEMM convolution)
    "conv_row": r"const int64_t m = (m0 \+ rc\.row) < p\.M \? (m0 \+ rc\.row) : 0;",
    "conv_img": r"const int64_t img = ([^;]+?);",
    "conv_pix": r"const int pix = static_cast<int>\(([^;]+?)\);",
    "img_off": r"img_off\[i\] = ([^;]+?);",
    "ih0": r"ih0\[i\] = ([^;]+?);",
    "iw0": r"iw0\[i\] = ([^;]+?);",
    "zero4": r"const uint32_t zero4 = static_cast<uint32_t>\(p\.ep\.a_zero\) \* (0x[0-9a-f]+)u;",
    "tap_c": r"const int tap = ([^;]+?), c = ([^;]+?);",
    "ih_iw": r"const int ih = ([^;]+?), iw = ([^;]+?);",
    "inside": r"const bool inside = ([^;]+?);",
    "pad_if": r"if \((nb > 0 && !inside)\) \*reinterpret_cast<uint4\*>\(dst_a\) = make_uint4\(([^;]+?)\);",
    "src_conv": r"ptx::cp_async_16\(ptx::smem_addr\(dst_a\), nb > 0 \? (p\.a \+ img_off.+?) : p\.a, nb\);",
}

# requant_store (quant.cu), the lines epilogue() below mirrors operation for operation
EPILOGUE_CU = [
    "const int32_t acc = sum - e.a_zero * __ldg(e.colsum + n) + (e.bias != nullptr ? __ldg(e.bias + n) : 0);",
    "const float y = __fmul_rn(__int2float_rn(acc), __ldg(e.mult + n));",
    "if (e.act == static_cast<int>(Act::ReLU)) v = v < 0.f ? 0.f : v;",
    "else if (e.act == static_cast<int>(Act::ReLU6)) v = v < 0.f ? 0.f : (v > 6.f ? 6.f : v);",
    "static_cast<float*>(p.out)[m * p.ldo + n] = v;",
    "int32_t q = rne_term(y) + e.out_zero;",
    "q += rne_term(__fmul_rn(__int2float_rn(static_cast<int32_t>(__ldg(e.res + m * e.ldr + n)) - e.res_zero), "
    "e.res_mult));",
    "q = q < e.qmin ? e.qmin : (q > e.qmax ? e.qmax : q);",
    "static_cast<uint8_t*>(p.out)[m * p.ldo + n] = static_cast<uint8_t>(q);",
    "v = v < -kClampF ? -kClampF : (v > kClampF ? kClampF : v); return __float2int_rn(v);",
    "constexpr float kClampF = 4194304.0f;",
]


class SourceChanged(Exception):
    """The kernel's text no longer has an expression the emulation reads (not a data-path failure)."""


def kernel_model(cu_text):
    text = _norm(re.sub(r"//[^\n]*", "", cu_text))      # code only: comments may quote code
    out = {}
    for name, pat in KERNEL_EXPRS.items():
        m = re.search(pat, text)
        if not m:
            raise SourceChanged(f"quant.cu: the '{name}' expression ({pat}) is gone: update the emulation")
        out[name] = m.groups()
    return out


def _compile(expr):
    return compile(_py(expr), "<quant.cu>", "eval")


# ----------------------------------------------------------------------------------- PTX ISA mma
def _ptx_tables():
    """(lane, element) -> (row, col) of mma.m16n8k32 .u8/.s8 A, B and the s32 C/D, from the PTX ISA text:
    A: row = groupID for a_i, 0 <= i < 4 || 8 <= i < 12, else groupID + 8; col = threadID_in_group * 4
       + (i & 3) (+ 16 for i >= 8).   B: row = threadID_in_group * 4 + (i & 3) (+ 16 for i >= 4),
       col = groupID.   C: row = groupID (i < 2) / groupID + 8; col = threadID_in_group * 2 + (i & 1).
    Element i of a fragment is byte i % 4 of register i // 4 (elements low to high)."""
    a = np.zeros((32, 16, 2), dtype=np.int64)
    b = np.zeros((32, 8, 2), dtype=np.int64)
    c = np.zeros((32, 4, 2), dtype=np.int64)
    for lane in range(32):
        group, tig = lane >> 2, lane % 4
        for i in range(16):
            row = group if (0 <= i < 4 or 8 <= i < 12) else group + 8
            col = tig * 4 + (i & 0x3) + (16 if i >= 8 else 0)
            a[lane, i] = (row, col)
        for i in range(8):
            b[lane, i] = (tig * 4 + (i & 0x3) + (16 if i >= 4 else 0), group)
        for i in range(4):
            c[lane, i] = (group if i < 2 else group + 8, tig * 2 + (i & 0x1))
    return a, b, c


PTX_A, PTX_B, PTX_C = _ptx_tables()


def _bytes(regs, signed):
    """[32, R] uint32 registers -> [32, 4R] elements (low byte first)."""
    by = np.stack([(regs >> (8 * j)) & 0xFF for j in range(4)], axis=-1).reshape(32, -1).astype(np.int64)
    return np.where(by > 127, by - 256, by) if signed else by


def mma_m16n8k32_u8s8(d, a_regs, b_regs):
    """d [32, 4] int32 += A (uint8 16 x 32) @ B (int8 32 x 8), A / B / d distributed as the ISA says."""
    A = np.zeros((16, 32), dtype=np.int64)
    B = np.zeros((32, 8), dtype=np.int64)
    A[PTX_A[..., 0], PTX_A[..., 1]] = _bytes(a_regs, signed=False)
    B[PTX_B[..., 0], PTX_B[..., 1]] = _bytes(b_regs, signed=True)
    D = np.zeros((16, 8), dtype=np.int64)
    D[PTX_C[..., 0], PTX_C[..., 1]] = d
    D = A @ B + D
    return D[PTX_C[..., 0], PTX_C[..., 1]].astype(np.int32)     # int32 wraps, as the IMMA accumulator


# ----------------------------------------------------------------------------------- the kernel
def rne_term(v):
    """quant.cu rne_term: clamp to +-2^22 (float32), __float2int_rn (round half to even)."""
    v = np.clip(v.astype(np.float32), np.float32(-4194304.0), np.float32(4194304.0))
    return np.rint(v).astype(np.int32)


def epilogue(p, m, n, acc_sum):
    """requant_store for the lanes whose (m, n) passed the kernel's bounds test (vectors)."""
    e = p.ep
    bias = e.bias[n].astype(np.int64) if e.bias is not None else 0
    acc = (acc_sum.astype(np.int64) - e.a_zero * e.colsum[n].astype(np.int64) + bias).astype(np.int32)
    y = acc.astype(np.float32) * e.mult[n]                       # __fmul_rn(__int2float_rn(acc), mult)
    if e.float_out:
        v = y
        if e.act == 1:
            v = np.where(v < 0, np.float32(0), v)
        elif e.act == 2:
            v = np.where(v < 0, np.float32(0), np.where(v > 6, np.float32(6), v))
        p.out[m * p.ldo + n] = v
        return
    q = rne_term(y) + np.int32(e.out_zero)
    if e.res is not None:
        r = e.res[m * e.ldr + n].astype(np.int32) - np.int32(e.res_zero)
        q = q + rne_term(r.astype(np.float32) * np.float32(e.res_mult))
    q = np.where(q < e.qmin, e.qmin, np.where(q > e.qmax, e.qmax, q))
    p.out[m * p.ldo + n] = q.astype(np.uint8)


def run_kernel(p, a_mode, h_text=None, cu_text=None):
    """Every CTA of quant_gemm_fwd_kernel<a_mode> on the emulated device, a_mode "gather", "cp_async" or
    "conv"; p: flat numpy buffers (a: A or the NHWC image, w, out) with their leading dimensions, M, N, K,
    the epilogue arguments ep and, for "conv", the geometry g."""
    H = header_model(_read(QUANT_H) if h_text is None else h_text)
    X = kernel_model(_read(QUANT_CU) if cu_text is None else cu_text)
    # the kernel's pointers are offsets into the emulated buffers: p.a, p.w = 0 in its expressions
    ns = dict(H, p=SimpleNamespace(a=0, w=0, M=p.M, N=p.N, K=p.K, lda=p.lda, ldw=p.ldw, ldo=p.ldo,
                                   g=getattr(p, "g", None), ep=SimpleNamespace(a_zero=p.ep.a_zero)))
    c = {name: [_compile(e) for e in exprs] for name, exprs in X.items() if name not in ("rows", "zero4")}
    rows = [(part.split(" = ", 1)[0], _compile(part.split(" = ", 1)[1])) for part in X["rows"][0].split(", ")]
    ev = lambda code, **kw: eval(code, ns, kw)   # noqa: E731
    tile_m, tile_n = ns[X["m0"][0]], ns[X["n0"][0]]
    threads, stages = H["kThreads"], H["kStages"]
    lanes = np.arange(32)
    grid = ((p.M + tile_m - 1) // tile_m, (p.N + tile_n - 1) // tile_n)
    wait_n = int(X["wait"][0])
    first_stage, first_k = int(X["first"][0]), int(X["first"][1])
    for bx in range(grid[0]):
        for by in range(grid[1]):
            smem = np.full(H["kSmemBytes"], 0xCD, dtype=np.uint8)      # poison: a read of an unwritten byte shows
            As = 0
            Ws = ev(c["smem_w"][0], As=0, smem=0)
            m0, n0 = bx * tile_m, by * tile_n
            ktiles = ev(c["ktiles"][0])
            pending, groups = [], []        # cp.async copies not yet committed / committed groups
            img_off, ih0, iw0 = {}, {}, {}
            if a_mode == "conv":              # the per-thread row decode before the K loop
                zero4 = p.ep.a_zero * int(X["zero4"][0], 16)
                for tid in range(threads):
                    for i in range(ns[X["chunk_iters"][0]]):
                        rc = H["load_chunk"](ev(c["chunk"][0], tid=tid, i=i))
                        m = ev(c["conv_row"][1], m0=m0, rc=rc) if ev(c["conv_row"][0], m0=m0, rc=rc) < p.M else 0
                        img = ev(c["conv_img"][0], m=m)
                        pix = ev(c["conv_pix"][0], m=m)
                        img_off[tid, i] = ev(c["img_off"][0], img=img)
                        ih0[tid, i] = ev(c["ih0"][0], pix=pix)
                        iw0[tid, i] = ev(c["iw0"][0], pix=pix)

            def load_stage(stage, k0):
                for tid in range(threads):
                    for i in range(ns[X["chunk_iters"][0]]):
                        rc = H["load_chunk"](ev(c["chunk"][0], tid=tid, i=i))
                        loc = dict(m0=m0, n0=n0, k0=k0, rc=rc, stage=stage, As=As, Ws=Ws)
                        for name, code in rows:
                            loc[name] = ev(code, **loc)
                        dst_a = ev(c["dst_a"][0], **loc)
                        nb = ev(c["nb"][0], **loc)
                        loc["nb"] = nb
                        if a_mode == "cp_async":
                            src = ev(c["src_a_vec"][0], **loc) if nb > 0 else 0
                            data = np.zeros(16, dtype=np.uint8)
                            data[:nb] = p.a[src:src + nb]
                            pending.append((dst_a, data))
                        elif a_mode == "conv":
                            loc["tap"], loc["c"] = (ev(e, **loc) for e in c["tap_c"])
                            loc["img_off"], loc["ih0"], loc["iw0"] = (
                                {i: img_off[tid, i]}, {i: ih0[tid, i]}, {i: iw0[tid, i]})
                            loc["i"] = i
                            loc["ih"], loc["iw"] = (ev(e, **loc) for e in c["ih_iw"])
                            loc["inside"] = ev(c["inside"][0], **loc)
                            if ev(c["pad_if"][0], **loc):
                                words = ev(c["pad_if"][1], zero4=zero4)     # make_uint4's 4 words
                                smem[dst_a:dst_a + 16] = np.array(words, dtype="<u4").view(np.uint8)
                            else:
                                src = ev(c["src_conv"][0], **loc) if nb > 0 else 0
                                data = np.zeros(16, dtype=np.uint8)
                                data[:nb] = p.a[src:src + nb]
                                pending.append((dst_a, data))
                        else:
                            words = [0, 0, 0, 0]
                            if nb > 0:
                                src = ev(c["src_a"][0], **loc)
                                for j in range(16):
                                    if j < nb:
                                        words[ev(c["gather"][0], j=j)] |= int(p.a[src + j]) << ev(c["gather"][1], j=j)
                            smem[dst_a:dst_a + 16] = np.array(words, dtype="<u4").view(np.uint8)
                        dst_w = ev(c["dst_w"][0], **loc)
                        w_ok = ev(c["w_ok"][0], **loc)
                        data = np.zeros(16, dtype=np.uint8)
                        if w_ok:
                            src = ev(c["src_w"][0], **loc)
                            data[:] = p.w[src:src + 16].view(np.uint8)
                        pending.append((dst_w, data))

            def commit():
                groups.append(list(pending))
                pending.clear()

            def wait(n):
                while len(groups) > n:
                    for dst, data in groups.pop(0):
                        smem[dst:dst + 16] = data

            def ld32(addr):
                assert (addr % 4 == 0).all(), "misaligned 32-bit shared load"
                by4 = smem[addr[:, None] + np.arange(4)].astype(np.uint32)
                return by4[:, 0] | by4[:, 1] << 8 | by4[:, 2] << 16 | by4[:, 3] << 24

            acc = {}
            for warp in range(threads // 32):
                for mi in range(H["kMI"]):
                    for ni in range(H["kNI"]):
                        acc[warp, mi, ni] = np.zeros((32, 4), dtype=np.int32)
            load_stage(first_stage, first_k)
            commit()
            for kt in range(ktiles):
                if kt + 1 < ktiles:
                    load_stage(ev(c["next"][0], kt=kt), ev(c["next"][1], kt=kt))
                commit()
                wait(wait_n)
                for warp in range(threads // 32):
                    wm, wn = ev(c["warp_mn"][0], warp=warp), ev(c["warp_mn"][1], warp=warp)
                    a_st = ev(c["a_st"][0], kt=kt, As=As)
                    w_st = ev(c["w_st"][0], kt=kt, Ws=Ws)
                    for ks in range(ev(c["ks_loop"][0])):
                        a = {}
                        b = {}
                        for mi in range(H["kMI"]):
                            regs = []
                            for r in range(4):
                                rc = H["a_frag"](lanes, r)
                                regs.append(ld32(ev(c["a_frag"][0], a_st=a_st, wm=wm, mi=mi, rc=rc, ks=ks)))
                            a[mi] = np.stack(regs, axis=1)
                        for ni in range(H["kNI"]):
                            regs = []
                            for r in range(2):
                                rc = H["b_frag"](lanes, r)
                                regs.append(ld32(ev(c["b_frag"][0], w_st=w_st, wn=wn, ni=ni, rc=rc, ks=ks)))
                            b[ni] = np.stack(regs, axis=1)
                        for mi in range(H["kMI"]):
                            for ni in range(H["kNI"]):
                                acc[warp, mi, ni] = mma_m16n8k32_u8s8(acc[warp, mi, ni], a[mi], b[ni])
            for warp in range(threads // 32):
                wm, wn = ev(c["warp_mn"][0], warp=warp), ev(c["warp_mn"][1], warp=warp)
                for mi in range(H["kMI"]):
                    for ni in range(H["kNI"]):
                        for r in range(4):
                            rc = H["acc_frag"](lanes, r)
                            loc = dict(m0=m0, n0=n0, wm=wm, wn=wn, mi=mi, ni=ni, rc=rc)
                            m = np.asarray(ev(c["out_m"][0], **loc))
                            n = np.asarray(ev(c["out_n"][0], **loc))
                            ok = np.array([ev(c["store_if"][0], m=int(mm), n=int(nn)) for mm, nn in zip(m, n)])
                            if ok.any():
                                epilogue(p, m[ok], n[ok], acc[warp, mi, ni][ok, r])


# ----------------------------------------------------------------------------------- harness
def _case(M, N, K, seed, bias=True, res=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (M, K), dtype=torch.uint8, generator=g)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    b = torch.randint(-5000, 5000, (N,), dtype=torch.int32, generator=g) if bias else None
    mult = (torch.rand(N, generator=g, dtype=torch.float64) * 4e-4 + 1e-5).to(torch.float32)
    r = torch.randint(0, 256, (M, N), dtype=torch.uint8, generator=g) if res else None
    return a, w, b, mult, r


EPILOGUES = {
    "u8": dict(res=False, out_zero=17, qmin=0, qmax=255, act=0, float_out=False, bias=True),
    "u8_res_relu6": dict(res=True, out_zero=40, qmin=40, qmax=160, act=0, float_out=False, bias=True),
    "u8_nobias_relu": dict(res=False, out_zero=3, qmin=3, qmax=255, act=0, float_out=False, bias=False),
    "f32_relu": dict(res=False, out_zero=0, qmin=0, qmax=255, act=1, float_out=True, bias=True),
    "f32_relu6": dict(res=False, out_zero=0, qmin=0, qmax=255, act=2, float_out=True, bias=False),
}
A_ZERO, RES_ZERO, RES_MULT = 37, 9, 0.731


def _cpu(a, w, b, mult, r, ep):
    M, N, K = a.shape[0], w.shape[0], a.shape[1]
    out = torch.empty((M, N), dtype=torch.float32 if ep["float_out"] else torch.uint8)
    kern = kernels("cpu", "quant")
    kern.gemm(a, A_ZERO, kern.pack_weight(w), K, b, mult, r, RES_ZERO, RES_MULT, ep["out_zero"], ep["qmin"],
              ep["qmax"], ep["act"], out)
    return out.numpy()


def _emulate(a, w, b, mult, r, ep, a_mode, lda_pad=0, ldo_pad=3, h_text=None, cu_text=None):
    """The cuda backend's call as the kernel sees it: A with row stride K + lda_pad, the packed weight
    [N, packed_k(K)] zero past K (pyimgcls/backends/cuda/quant.py pack_weight), out rows padded by ldo_pad
    and poisoned (a write outside [M, N] or a missed element shows)."""
    H = header_model(_read(QUANT_H) if h_text is None else h_text)
    M, K = a.shape
    N = w.shape[0]
    lda, kp, ldo = K + lda_pad, H["packed_k"](K), N + ldo_pad
    abuf = np.full((M, lda), 0xEE, dtype=np.uint8)        # the row gap is poison, never to be read
    abuf[:, :K] = a.numpy()
    wbuf = np.zeros((N, kp), dtype=np.int8)
    wbuf[:, :K] = w.numpy()
    float_out = ep["float_out"]
    out = np.full(M * ldo, np.nan if float_out else 255, dtype=np.float32 if float_out else np.uint8)
    p = SimpleNamespace(a=abuf.reshape(-1), w=wbuf.reshape(-1), out=out, M=M, N=N, K=K, lda=lda, ldw=kp, ldo=ldo,
                        ep=_ep_args(w, b, mult, r, ep))
    run_kernel(p, a_mode, h_text, cu_text)
    return _result(out, M, N, ldo, float_out)


def _ep_args(w, b, mult, r, ep):
    return SimpleNamespace(colsum=w.to(torch.int32).sum(1).numpy().astype(np.int32),
                           bias=None if b is None else b.numpy(), mult=mult.numpy(),
                           res=None if r is None else r.numpy().reshape(-1), ldr=w.shape[0], a_zero=A_ZERO,
                           res_zero=RES_ZERO, res_mult=np.float32(RES_MULT), out_zero=ep["out_zero"], qmin=ep["qmin"],
                           qmax=ep["qmax"], float_out=ep["float_out"], act=ep["act"])


def _result(out, M, N, ldo, float_out):
    full = out.reshape(M, ldo)
    gap = full[:, N:]
    assert (np.isnan(gap).all() if float_out else (gap == 255).all()), "the kernel wrote outside [M, N]"
    return full[:, :N]


def _assert_same(ours, want):
    assert ours.dtype == want.dtype
    if ours.dtype == np.float32:
        bad = ours.view(np.int32) != want.view(np.int32)
    else:
        bad = ours != want
    assert not bad.any(), f"{int(bad.sum())} of {bad.size} differ; first at {np.argwhere(bad)[0].tolist()}"


# (M, N, K): one element (batch 1, K < one chunk); K % 32 != 0 and N < one n8 tile; the stem conv's K = 147
# with M, N just past one CTA tile; 3 x 3 CTAs, K tiles 4 with a partial last one; long K (19 tiles,
# both stages refilled many times), batch 1
SHAPES = [(1, 1, 1), (7, 13, 33), (65, 70, 147), (130, 129, 200), (1, 20, 1203)]


@pytest.mark.parametrize("a_mode", ["gather", "cp_async"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_emulated_kernel_matches_cpu_backend(shape, a_mode):
    M, N, K = shape
    for i, (name, ep) in enumerate(EPILOGUES.items()):
        if i and M * N * K > 200_000:       # the big shapes: two epilogues, the data path is the same
            if name not in ("u8_res_relu6", "f32_relu"):
                continue
        a, w, b, mult, r = _case(M, N, K, seed=M * 7 + N + i, bias=ep["bias"], res=ep["res"])
        # cp.async A needs 16-byte rows: pad lda to a multiple of 16 (the gather path takes any lda)
        pad = (-K) % 16 if a_mode == "cp_async" else 5
        _assert_same(_emulate(a, w, b, mult, r, ep, a_mode, lda_pad=pad), _cpu(a, w, b, mult, r, ep))


def test_extreme_values_and_half_way_rounding():
    # all-255 activations against +-127 weights at a long K: the largest sums (no saturation in IMMA's
    # int32 accumulation), and multipliers that put results on .5 (round half to even)
    M, N, K = 9, 10, 520
    a = torch.full((M, K), 255, dtype=torch.uint8)
    a[::2] = 0
    w = torch.full((N, K), 127, dtype=torch.int8)
    w[1::2] = -127
    b = torch.arange(N, dtype=torch.int32) - 5
    mult = torch.full((N,), 0.5, dtype=torch.float32)
    mult[::3] = 2.0 ** -20
    ep = dict(EPILOGUES["u8"], qmin=0, qmax=255)
    _assert_same(_emulate(a, w, b, mult, None, ep, "gather"), _cpu(a, w, b, mult, None, ep))
    epf = EPILOGUES["f32_relu6"]
    _assert_same(_emulate(a, w, None, mult, None, epf, "cp_async", lda_pad=8), _cpu(a, w, None, mult, None, epf))


def test_header_maps_are_the_ptx_fragments():
    # the kernel's maps (quant.h) against the ISA tables, register by register
    H = header_model(_read(QUANT_H))
    for lane in range(32):
        for r in range(4):
            rc = H["a_frag"](lane, r)
            for j in range(4):
                assert tuple(PTX_A[lane, 4 * r + j]) == (rc.row, rc.col + j)
            rc = H["acc_frag"](lane, r)
            assert tuple(PTX_C[lane, r]) == (rc.row, rc.col)
        for r in range(2):
            rc = H["b_frag"](lane, r)
            for j in range(4):
                assert tuple(PTX_B[lane, 4 * r + j]) == (rc.col + j, rc.row)   # B stored [n][k]
    # the chunk map covers each tile byte exactly once per stage
    seen = np.zeros((H["kTileM"], H["kTileK"]), dtype=int)
    for tid in range(H["kThreads"]):
        for i in range(H["kChunkIters"]):
            rc = H["load_chunk"](tid + i * H["kThreads"])
            seen[rc.row, rc.col:rc.col + 16] += 1
    assert (seen == 1).all()
    assert fragment_loads_conflict_free(H)


def fragment_loads_conflict_free(H):
    """The 32 lanes of each 32-bit fragment load (A and B) hit 32 distinct shared-memory banks."""
    lanes = np.arange(32)
    for frag, regs in (("a_frag", 4), ("b_frag", 2)):
        for r in range(regs):
            rc = H[frag](lanes, r)
            if len(set(((rc.row * H["kSmemStride"] + rc.col) // 4 % 32).tolist())) != 32:
                return False
    return True


def test_unpadded_rows_would_conflict():
    # the 16 padding bytes of each shared row are what makes the loads conflict-free (a performance
    # property the bit-exact comparison cannot see): without them 4 lanes share a bank
    h = _read(QUANT_H).replace("kSmemStride = kTileK + 16;", "kSmemStride = kTileK;")
    assert not fragment_loads_conflict_free(header_model(h))


def test_epilogue_source_is_the_emulated_one():
    text = _norm(_read(QUANT_CU))
    for line in EPILOGUE_CU:
        assert _norm(line) in text, f"quant.cu epilogue changed: {line!r} not found; update epilogue() here"
    assert "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32" in text


# ----------------------------------------------------------------------------------- implicit-GEMM conv
def _conv_case(case, seed):
    N, C, H, W, O, k, s, pd, d = case
    g = torch.Generator().manual_seed(seed)
    # x: a channel slice of a wider NHWC tensor (pixel stride C + 16: the kernel must use the strides)
    wide = torch.randint(0, 256, (N, H, W, C + 16), dtype=torch.uint8, generator=g)
    x = wide[..., :C].permute(0, 3, 1, 2)           # [N, C, H, W] view, sC = 1
    wq = torch.randint(-127, 128, (O, k, k, C), dtype=torch.int8, generator=g)    # (kh, kw, c) order
    oh, ow = (H + 2 * pd - d * (k - 1) - 1) // s + 1, (W + 2 * pd - d * (k - 1) - 1) // s + 1
    b = torch.randint(-5000, 5000, (O,), dtype=torch.int32, generator=g)
    mult = (torch.rand(O, generator=g, dtype=torch.float64) * 4e-4 + 1e-5).to(torch.float32)
    r = torch.randint(0, 256, (N * oh * ow, O), dtype=torch.uint8, generator=g)
    return wide, x, wq.reshape(O, -1), b, mult, r, (k, s, pd, d, oh, ow)


def _cpu_conv(x, w, b, mult, r, ep, geo):
    k, s, pd, d, oh, ow = geo
    out = torch.empty((x.shape[0] * oh * ow, w.shape[0]), dtype=torch.float32 if ep["float_out"] else torch.uint8)
    kern = kernels("cpu", "quant")
    kern.conv_gemm(x, A_ZERO, kern.pack_weight(w), k, k, (s, s), (pd, pd), (d, d), oh, ow, b, mult, r, RES_ZERO,
                   RES_MULT, ep["out_zero"], ep["qmin"], ep["qmax"], ep["act"], out)
    return out.numpy()


def _emulate_conv(wide, x, w, b, mult, r, ep, geo, h_text=None, cu_text=None):
    H_ = header_model(_read(QUANT_H) if h_text is None else h_text)
    k, s, pd, d, oh, ow = geo
    N, C, H, W = x.shape
    O, K = w.shape
    M, kp, ldo = N * oh * ow, H_["packed_k"](K), O + 3
    wbuf = np.zeros((O, kp), dtype=np.int8)
    wbuf[:, :K] = w.numpy()
    float_out = ep["float_out"]
    out = np.full(M * ldo, np.nan if float_out else 255, dtype=np.float32 if float_out else np.uint8)
    sN, _, sH, sW = x.stride()
    g = SimpleNamespace(sN=sN, sH=sH, sW=sW, H=H, W=W, C=C, KW=k, SH=s, SW=s, PH=pd, PW=pd, DH=d, DW=d, OH=oh, OW=ow)
    p = SimpleNamespace(a=wide.numpy().reshape(-1), w=wbuf.reshape(-1), out=out, M=M, N=O, K=K, lda=0, ldw=kp,
                        ldo=ldo, ep=_ep_args(w, b, mult, r, ep), g=g)
    run_kernel(p, "conv", h_text, cu_text)
    return _result(out, M, O, ldo, float_out)


# (N, C, H, W, O, k, stride, padding, dilation): batch 1 3x3 padded; 7 x 2 CTAs, K = 144 (3 K tiles, the last
# partial); stride 2 + padding; dilation 2 with a padding wider than the kernel reach at the corners; a 1x1
# stride-2 downsample (no padding taps)
CONV_CASES = [(1, 16, 5, 6, 20, 3, 1, 1, 1), (3, 16, 12, 11, 70, 3, 1, 1, 1), (2, 32, 9, 7, 24, 3, 2, 1, 1),
              (1, 16, 9, 9, 8, 3, 1, 2, 2), (2, 48, 8, 8, 65, 1, 2, 0, 1)]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "n{}c{}_{}x{}_o{}_k{}s{}p{}d{}".format(*c))
def test_emulated_implicit_conv_matches_cpu_backend(case):
    for name in ("u8_res_relu6", "f32_relu"):
        ep = EPILOGUES[name]
        wide, x, w, b, mult, r, geo = _conv_case(case, seed=sum(case))
        r = r if ep["res"] else None
        _assert_same(_emulate_conv(wide, x, w, b, mult, r, ep, geo), _cpu_conv(x, w, b, mult, r, ep, geo))


CONV_PLANTS = [
    ("ih0[i] = (pix / p.g.OW) * p.g.SH - p.g.PH;", "ih0[i] = (pix % p.g.OW) * p.g.SH - p.g.PH;"),
    ("iw = iw0[i] + (tap % p.g.KW) * p.g.DW;", "iw = iw0[i] + (tap % p.g.KW);"),
    ("const bool inside = ih >= 0 && ih < p.g.H && iw >= 0 && iw < p.g.W;",
     "const bool inside = ih >= 0 && ih < p.g.H && iw >= 0 && iw <= p.g.W;"),
    ("make_uint4(zero4, zero4, zero4, zero4);", "make_uint4(0u, 0u, 0u, 0u);"),   # pads with 0, not a_zero
    ("p.a + img_off[i] + ih * p.g.sH + iw * p.g.sW + c", "p.a + img_off[i] + ih * p.g.sH + iw * p.g.C + c"),
]


@pytest.mark.parametrize("plant", range(len(CONV_PLANTS)), ids=lambda i: f"conv_plant{i}")
def test_planted_conv_bugs_are_caught(plant):
    old, new = CONV_PLANTS[plant]
    cu = _read(QUANT_CU)
    assert old in cu
    cu = cu.replace(old, new)
    ep = EPILOGUES["u8_res_relu6"]
    wide, x, w, b, mult, r, geo = _conv_case(CONV_CASES[3], seed=3)       # dilation 2, padding 2
    want = _cpu_conv(x, w, b, mult, r, ep, geo)
    try:
        kernel_model(cu)
    except SourceChanged:
        raise AssertionError(f"conv plant {plant} should keep the source readable") from None
    try:
        got = _emulate_conv(wide, x, w, b, mult, r, ep, geo, cu_text=cu)
    except (AssertionError, IndexError, ValueError) as e:
        print(f"conv plant {plant}: caught by {type(e).__name__}: {str(e)[:80]}")
        return
    bad = got != want
    assert bad.any(), f"conv plant {plant} not caught"
    print(f"conv plant {plant}: {int(bad.sum())} of {bad.size} outputs differ")


# (file, original, planted): each must make the emulation disagree with the cpu backend
PLANTS = [
    ("h", "{(lane >> 2) + ((r & 1) << 3), 4 * (lane & 3) + ((r >> 1) << 4)}",
     "{(lane >> 2) + ((r >> 1) << 3), 4 * (lane & 3) + ((r & 1) << 4)}"),                       # A regs swapped
    ("h", "{lane >> 2, 4 * (lane & 3) + (r << 4)}", "{lane >> 2, 4 * (lane & 3) + (r << 3)}"),   # B k offset
    ("h", "{(lane >> 2) + ((r >> 1) << 3), 2 * (lane & 3) + (r & 1)}",
     "{(lane >> 2) + ((r & 1) << 3), 2 * (lane & 3) + (r >> 1)}"),                              # acc map
    ("h", "(c % kChunksPerRow) * 16}", "(c % kChunksPerRow) * 8}"),                               # chunk map
    ("cu", "ptx::cp_async_wait<1>();", "ptx::cp_async_wait<2>();"),                              # stale stage
    ("cu", "if (kt + 1 < ktiles) load_stage(static_cast<int>((kt + 1) & 1)",
     "if (kt + 1 < ktiles) load_stage(static_cast<int>(kt & 1)"),                               # wrong stage
    ("cu", "n0 + wn * 8 * kNI + ni * 8 + rc.col;", "n0 + wn * 8 * kNI + ni * 8 + rc.row;"),
    ("cu", "const bool w_ok = n < p.N;", "const bool w_ok = n <= p.N;"),
    ("cu", "if (m < p.M && n < p.N) requant_store", "if (m < p.M && n <= p.N) requant_store"),
    ("cu", "ks * kStepK + rc.col);\n        }\n#pragma unroll\n      for (int ni",
     "rc.col);\n        }\n#pragma unroll\n      for (int ni"),                                  # A ignores ks
]


@pytest.mark.parametrize("plant", range(len(PLANTS)), ids=lambda i: f"plant{i}")
def test_planted_bugs_are_caught(plant):
    where, old, new = PLANTS[plant]
    h, cu = _read(QUANT_H), _read(QUANT_CU)
    if where == "h":
        assert old in h
        h = h.replace(old, new)
    else:
        assert old in cu
        cu = cu.replace(old, new)
    M, N, K = 67, 70, 147
    ep = EPILOGUES["u8_res_relu6"]
    a, w, b, mult, r = _case(M, N, K, seed=5, bias=True, res=True)
    want = _cpu(a, w, b, mult, r, ep)
    header_model(h), kernel_model(cu)       # the plant keeps the source readable (SourceChanged otherwise)
    try:
        got = _emulate(a, w, b, mult, r, ep, "gather", h_text=h, cu_text=cu)
    except (AssertionError, IndexError, ValueError) as e:
        print(f"plant {plant}: caught by {type(e).__name__}: {str(e)[:80]}")
        return          # out-of-range access, write outside [M, N], misaligned load: caught
    bad = got != want
    assert bad.any(), f"plant {plant} not caught"
    print(f"plant {plant}: {int(bad.sum())} of {bad.size} outputs differ")
