// The only file that talks to Node-API: argument checking and conversion for every kernel.
// Typed arrays are passed zero-copy; every length is checked before a kernel runs, and a bad
// argument becomes a JS TypeError/RangeError (C++ exceptions are enabled), never a crash.
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "cpu_features.h"
#include "gemm/gemm.h"
#include "ops/ops.h"
#include "ops/rowops_api.h"
#include "threadpool.h"

namespace {



struct F32 { float* p = nullptr; int64_t n = 0; };
struct U16 { uint16_t* p = nullptr; int64_t n = 0; };
struct U8 { uint8_t* p = nullptr; int64_t n = 0; };
struct I32 { int32_t* p = nullptr; int64_t n = 0; };

[[noreturn]] void type_error(Napi::Env env, const std::string& msg) { throw Napi::TypeError::New(env, msg); }
[[noreturn]] void range_error(Napi::Env env, const std::string& msg) { throw Napi::RangeError::New(env, msg); }

bool is_null(const Napi::Value& v) { return v.IsNull() || v.IsUndefined(); }

template <typename T>
T* typed_ptr(const Napi::Value& v, napi_typedarray_type want, const char* tname, const char* name, int64_t* len) {
  Napi::Env env = v.Env();
  if (!v.IsTypedArray()) type_error(env, std::string(name) + ": expected a " + tname);
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != want) type_error(env, std::string(name) + ": expected a " + tname);
  *len = static_cast<int64_t>(ta.ElementLength());
  Napi::ArrayBuffer ab = ta.ArrayBuffer();
  return reinterpret_cast<T*>(static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset());
}

F32 f32(const Napi::Value& v, const char* name, bool nullable = false) {
  F32 r;
  if (nullable && is_null(v)) return r;
  r.p = typed_ptr<float>(v, napi_float32_array, "Float32Array", name, &r.n);
  return r;
}
U16 u16(const Napi::Value& v, const char* name) {
  U16 r;
  r.p = typed_ptr<uint16_t>(v, napi_uint16_array, "Uint16Array", name, &r.n);
  return r;
}
U8 u8(const Napi::Value& v, const char* name, bool nullable = false) {
  U8 r;
  if (nullable && is_null(v)) return r;
  r.p = typed_ptr<uint8_t>(v, napi_uint8_array, "Uint8Array", name, &r.n);
  return r;
}
I32 i32(const Napi::Value& v, const char* name, bool nullable = false) {
  I32 r;
  if (nullable && is_null(v)) return r;
  r.p = typed_ptr<int32_t>(v, napi_int32_array, "Int32Array", name, &r.n);
  return r;
}

int64_t integer(const Napi::Value& v, const char* name, int64_t min = 0) {
  Napi::Env env = v.Env();
  if (!v.IsNumber()) type_error(env, std::string(name) + ": expected an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d)) type_error(env, std::string(name) + ": expected an integer");
  if (d < static_cast<double>(min)) range_error(env, std::string(name) + ": must be >= " + std::to_string(min));
  if (d > 9007199254740991.0) range_error(env, std::string(name) + ": too large");
  return static_cast<int64_t>(d);
}
float number(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) type_error(v.Env(), std::string(name) + ": expected a number");
  return static_cast<float>(v.As<Napi::Number>().DoubleValue());
}
bool boolean(const Napi::Value& v, const char* name) {
  if (!v.IsBoolean()) type_error(v.Env(), std::string(name) + ": expected a boolean");
  return v.As<Napi::Boolean>().Value();
}

void need(Napi::Env env, int64_t have, int64_t want, const char* name) {
  if (have < want)
    range_error(env, std::string(name) + ": needs at least " + std::to_string(want) + " elements, has " +
                         std::to_string(have));
}
// Elements a strided matrix of `rows` rows, `cols` used columns and row stride ld occupies.
int64_t span(int64_t rows, int64_t cols, int64_t ld) { return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols; }

// ---- threads / misc --------------------------------------------------------------------------------
Napi::Value Noop(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
Napi::Value NumThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), peft::num_threads()); }
Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  peft::set_num_threads(static_cast<int>(integer(info[0], "threads", 1)));
  return info.Env().Undefined();
}
Napi::Value KernelName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), peft::gemm_kernel_name());
}

// {level, gemm, bf16Dot, bf16Kernel, envInvalid, cpu: {avx2, fma, ...}}: what the CPU-feature probe found and
// what PEFT_KERNELS left in use.
Napi::Value KernelInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const peft::CpuFeatures& f = peft::cpu_features();
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("avx2", f.avx2);
  cpu.Set("fma", f.fma);
  cpu.Set("f16c", f.f16c);
  cpu.Set("avx512f", f.avx512f);
  cpu.Set("avx512bw", f.avx512bw);
  cpu.Set("avx512vl", f.avx512vl);
  cpu.Set("avx512dq", f.avx512dq);
  cpu.Set("avx512_vnni", f.avx512_vnni);
  cpu.Set("avx512_bf16", f.avx512_bf16);
  cpu.Set("amx_tile", f.amx_tile);
  cpu.Set("amx_bf16", f.amx_bf16);
  Napi::Object o = Napi::Object::New(env);
  o.Set("level", peft::kernel_level_label());
  o.Set("gemm", peft::gemm_kernel_name());
  o.Set("bf16Dot", peft::bf16_dot_available());
  o.Set("bf16Kernel", peft::gemm_bf16_kernel_name());
  o.Set("rowops", peft::row_ops().name);
  o.Set("envInvalid", peft::kernel_env_invalid());
  o.Set("cpu", cpu);
  return o;
}

// ---- GEMM ---------------------------------------------------------------------------------------------
struct GemmArgs {
  bool ta, tb;
  int64_t M, N, K, lda, ldc;
  float alpha, beta;
  F32 A, C;
};

// Arguments shared by gemm and gemmQ4: transA, transB, M, N, K, alpha, A, lda at 0..7, then the
// weight argument(s), then beta, C, ldc starting at `beta_at`.
GemmArgs gemm_common(const Napi::CallbackInfo& info, size_t beta_at) {
  Napi::Env env = info.Env();
  GemmArgs g;
  g.ta = boolean(info[0], "transA");
  g.tb = boolean(info[1], "transB");
  g.M = integer(info[2], "M");
  g.N = integer(info[3], "N");
  g.K = integer(info[4], "K");
  g.alpha = number(info[5], "alpha");
  g.A = f32(info[6], "A");
  g.lda = integer(info[7], "lda", 1);
  g.beta = number(info[beta_at], "beta");
  g.C = f32(info[beta_at + 1], "C");
  g.ldc = integer(info[beta_at + 2], "ldc", 1);
  if (g.ldc < g.N) range_error(env, "ldc must be >= N");
  if (g.ta ? g.lda < g.M : g.lda < g.K) range_error(env, "lda too small for op(A)");
  need(env, g.A.n, g.ta ? span(g.K, g.M, g.lda) : span(g.M, g.K, g.lda), "A");
  need(env, g.C.n, span(g.M, g.N, g.ldc), "C");
  return g;
}

// gemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); B: Float32Array or
// Uint16Array (bfloat16 bits).
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GemmArgs g = gemm_common(info, 10);
  int64_t ldb = integer(info[9], "ldb", 1);
  peft::WeightRef w;
  w.trans = g.tb;
  w.ld = ldb;
  int64_t bn;
  if (info[8].IsTypedArray() && info[8].As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array) {
    U16 b = u16(info[8], "B");
    w.kind = peft::WeightKind::BF16;
    w.data = b.p;
    bn = b.n;
  } else {
    F32 b = f32(info[8], "B");
    w.kind = peft::WeightKind::F32;
    w.data = b.p;
    bn = b.n;
  }
  if (g.tb ? ldb < g.K : ldb < g.N) range_error(env, "ldb too small for op(B)");
  need(env, bn, g.tb ? span(g.N, g.K, ldb) : span(g.K, g.N, ldb), "B");
  peft::gemm(g.ta, g.M, g.N, g.K, g.alpha, g.A.p, g.lda, w, g.beta, g.C.p, g.ldc);
  return env.Undefined();
}

// gemmBf16Dot(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); B: Uint16Array (bfloat16
// bits) multiplied with AMX TDPBF16PS or VDPBF16PS, A rounded to bf16 (see gemm.h gemm_bf16_dot). transA must be false.
// Throws when the CPU (or PEFT_KERNELS) does not allow the bf16 dot-product path.
Napi::Value GemmBf16Dot(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GemmArgs g = gemm_common(info, 10);
  int64_t ldb = integer(info[9], "ldb", 1);
  U16 b = u16(info[8], "B");
  if (g.ta) range_error(env, "gemmBf16Dot: transA must be false");
  if (g.tb ? ldb < g.K : ldb < g.N) range_error(env, "ldb too small for op(B)");
  need(env, b.n, g.tb ? span(g.N, g.K, ldb) : span(g.K, g.N, ldb), "B");
  if (!peft::gemm_bf16_dot(g.M, g.N, g.K, g.alpha, g.A.p, g.lda, b.p, ldb, g.tb, g.beta, g.C.p, g.ldc))
    range_error(env, "gemmBf16Dot: this CPU has no AVX512_BF16 (VDPBF16PS), or PEFT_KERNELS is below avx512");
  return env.Undefined();
}

// Reads a 4-bit matrix description {packed, code, rows, cols, blocksize, absmax} or double-quantized
// {..., absmaxCodes, nestedAbsmax, nestedCode, nestedBlocksize, offset}.
peft::Q4Matrix q4_from(const Napi::Value& v) {
  Napi::Env env = v.Env();
  if (!v.IsObject()) type_error(env, "q4: expected an object");
  Napi::Object o = v.As<Napi::Object>();
  peft::Q4Matrix q;
  q.rows = integer(o.Get("rows"), "q4.rows");
  q.cols = integer(o.Get("cols"), "q4.cols");
  q.blocksize = integer(o.Get("blocksize"), "q4.blocksize", 1);
  int64_t numel = q.rows * q.cols;
  int64_t blocks = (numel + q.blocksize - 1) / q.blocksize;
  U8 packed = u8(o.Get("packed"), "q4.packed");
  need(env, packed.n, (numel + 1) / 2, "q4.packed");
  q.packed = packed.p;
  F32 code = f32(o.Get("code"), "q4.code");
  need(env, code.n, 16, "q4.code");
  q.code = code.p;
  if (!is_null(o.Get("absmax"))) {
    F32 a = f32(o.Get("absmax"), "q4.absmax");
    need(env, a.n, blocks, "q4.absmax");
    q.absmax = a.p;
  } else {
    U8 codes = u8(o.Get("absmaxCodes"), "q4.absmaxCodes");
    need(env, codes.n, blocks, "q4.absmaxCodes");
    q.absmax_codes = codes.p;
    q.nested_blocksize = integer(o.Get("nestedBlocksize"), "q4.nestedBlocksize", 1);
    F32 na = f32(o.Get("nestedAbsmax"), "q4.nestedAbsmax");
    need(env, na.n, (blocks + q.nested_blocksize - 1) / q.nested_blocksize, "q4.nestedAbsmax");
    q.nested_absmax = na.p;
    F32 nc = f32(o.Get("nestedCode"), "q4.nestedCode");
    need(env, nc.n, 256, "q4.nestedCode");
    q.nested_code = nc.p;
    q.offset = number(o.Get("offset"), "q4.offset");
  }
  return q;
}

// gemmQ4(transA, transB, M, N, K, alpha, A, lda, q4, beta, C, ldc): transB means op(B) = W^T with
// W = q4 [N, K]; otherwise op(B) = W with W [K, N].
Napi::Value GemmQ4(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GemmArgs g = gemm_common(info, 9);
  peft::Q4Matrix q = q4_from(info[8]);
  if (g.tb ? (q.rows != g.N || q.cols != g.K) : (q.rows != g.K || q.cols != g.N))
    range_error(env, "q4: shape does not match op(B)");
  peft::WeightRef w;
  w.kind = peft::WeightKind::Q4;
  w.trans = g.tb;
  w.q4 = &q;
  peft::gemm(g.ta, g.M, g.N, g.K, g.alpha, g.A.p, g.lda, w, g.beta, g.C.p, g.ldc);
  return env.Undefined();
}

Napi::Value DequantQ4(const Napi::CallbackInfo& info) {
  peft::Q4Matrix q = q4_from(info[0]);
  F32 out = f32(info[1], "out");
  need(info.Env(), out.n, q.rows * q.cols, "out");
  peft::dequantize_q4(q, out.p);
  return info.Env().Undefined();
}

// ---- embedding --------------------------------------------------------------------------------------
Napi::Value EmbeddingForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t vocab = integer(info[1], "vocab"), D = integer(info[2], "D");
  I32 ids = i32(info[3], "ids");
  F32 out = f32(info[4], "out");
  need(env, out.n, ids.n * D, "out");
  int64_t bad;
  if (info[0].IsTypedArray() && info[0].As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array) {
    U16 w = u16(info[0], "W");
    need(env, w.n, vocab * D, "W");
    bad = peft::embedding_forward(nullptr, w.p, vocab, D, ids.p, ids.n, out.p);
  } else {
    F32 w = f32(info[0], "W");
    need(env, w.n, vocab * D, "W");
    bad = peft::embedding_forward(w.p, nullptr, vocab, D, ids.p, ids.n, out.p);
  }
  if (bad >= 0)
    range_error(env, "token id " + std::to_string(ids.p[bad]) + " at position " + std::to_string(bad) +
                         " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  return env.Undefined();
}

Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  F32 dout = f32(info[0], "dout");
  I32 ids = i32(info[1], "ids");
  int64_t D = integer(info[2], "D");
  F32 dw = f32(info[3], "dW");
  need(env, dout.n, ids.n * D, "dout");
  int64_t vocab = D > 0 ? dw.n / D : 0;
  for (int64_t r = 0; r < ids.n; ++r)
    if (ids.p[r] < 0 || ids.p[r] >= vocab) range_error(env, "ids: id outside the vocabulary");
  peft::embedding_backward(dout.p, ids.p, ids.n, D, dw.p);
  return env.Undefined();
}

// ---- norms --------------------------------------------------------------------------------------------
Napi::Value RmsnormForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  F32 x = f32(info[0], "x"), w = f32(info[1], "w");
  int64_t rows = integer(info[2], "rows"), D = integer(info[3], "D");
  float eps = number(info[4], "eps");
  F32 y = f32(info[5], "y"), rstd = f32(info[6], "rstd", true);
  need(env, x.n, rows * D, "x");
  need(env, w.n, D, "w");
  need(env, y.n, rows * D, "y");
  if (rstd.p) need(env, rstd.n, rows, "rstd");
  peft::rmsnorm_forward(x.p, w.p, rows, D, eps, y.p, rstd.p);
  return env.Undefined();
}

Napi::Value RmsnormBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  F32 dy = f32(info[0], "dy"), x = f32(info[1], "x"), w = f32(info[2], "w"), rstd = f32(info[3], "rstd");
  int64_t rows = integer(info[4], "rows"), D = integer(info[5], "D");
  F32 dx = f32(info[6], "dx", true), dw = f32(info[7], "dw", true);
  need(env, dy.n, rows * D, "dy");
  need(env, x.n, rows * D, "x");
  need(env, w.n, D, "w");
  need(env, rstd.n, rows, "rstd");
  if (dx.p) need(env, dx.n, rows * D, "dx");
  if (dw.p) need(env, dw.n, D, "dw");
  peft::rmsnorm_backward(dy.p, x.p, w.p, rstd.p, rows, D, dx.p, dw.p);
  return env.Undefined();
}

Napi::Value LayernormForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  F32 x = f32(info[0], "x"), w = f32(info[1], "w", true), b = f32(info[2], "b", true);
  int64_t rows = integer(info[3], "rows"), D = integer(info[4], "D");
  float eps = number(info[5], "eps");
  F32 y = f32(info[6], "y"), mean = f32(info[7], "mean", true), rstd = f32(info[8], "rstd", true);
  need(env, x.n, rows * D, "x");
  need(env, y.n, rows * D, "y");
  if (w.p) need(env, w.n, D, "w");
  if (b.p) need(env, b.n, D, "b");
  if (mean.p) need(env, mean.n, rows, "mean");
  if (rstd.p) need(env, rstd.n, rows, "rstd");
  peft::layernorm_forward(x.p, w.p, b.p, rows, D, eps, y.p, mean.p, rstd.p);
  return env.Undefined();
}

Napi::Value LayernormBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  F32 dy = f32(info[0], "dy"), x = f32(info[1], "x"), w = f32(info[2], "w", true);
  F32 mean = f32(info[3], "mean"), rstd = f32(info[4], "rstd");
  int64_t rows = integer(info[5], "rows"), D = integer(info[6], "D");
  F32 dx = f32(info[7], "dx", true), dw = f32(info[8], "dw", true), db = f32(info[9], "db", true);
  need(env, dy.n, rows * D, "dy");
  need(env, x.n, rows * D, "x");
  need(env, mean.n, rows, "mean");
  need(env, rstd.n, rows, "rstd");
  if (w.p) need(env, w.n, D, "w");
  if (dx.p) need(env, dx.n, rows * D, "dx");
  if (dw.p) need(env, dw.n, D, "dw");
  if (db.p) need(env, db.n, D, "db");
  peft::layernorm_backward(dy.p, x.p, w.p, mean.p, rstd.p, rows, D, dx.p, dw.p, db.p);
  return env.Undefined();
}

// ---- RoPE ------------------------------------------------------------------------------------------------
Napi::Value RopeTable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  I32 pos = i32(info[0], "positions");
  F32 inv = f32(info[1], "invFreq");
  float scaling = number(info[2], "attentionScaling");
  F32 c = f32(info[3], "cos"), s = f32(info[4], "sin");
  need(env, c.n, pos.n * inv.n, "cos");
  need(env, s.n, pos.n * inv.n, "sin");
  peft::rope_table(pos.p, pos.n, inv.p, inv.n, scaling, c.p, s.p);
  return env.Undefined();
}

Napi::Value RopeApply(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  F32 x = f32(info[0], "x"), y = f32(info[1], "y");
  int64_t rows = integer(info[2], "rows"), H = integer(info[3], "H"), D = integer(info[4], "D");
  int64_t stride = integer(info[5], "stride");
  F32 c = f32(info[6], "cos"), s = f32(info[7], "sin");
  int sign = static_cast<int>(number(info[8], "sign"));
  bool acc = boolean(info[9], "accumulate");
  if (D % 2) range_error(env, "D must be even");
  if (stride < H * D) range_error(env, "stride must be >= H*D");
  need(env, x.n, span(rows, H * D, stride), "x");
  need(env, y.n, span(rows, H * D, stride), "y");
  need(env, c.n, rows * (D / 2), "cos");
  need(env, s.n, rows * (D / 2), "sin");
  peft::rope_apply(x.p, y.p, rows, H, D, stride, c.p, s.p, sign, acc);
  return env.Undefined();
}

// ---- attention ---------------------------------------------------------------------------------------------
struct AttnArgs {
  peft::AttentionShape s;
};

peft::AttentionShape attn_shape(const Napi::Value& v) {
  Napi::Env env = v.Env();
  if (!v.IsObject()) type_error(env, "shape: expected an object");
  Napi::Object o = v.As<Napi::Object>();
  peft::AttentionShape s{};
  s.B = integer(o.Get("B"), "B");
  s.Tq = integer(o.Get("Tq"), "Tq");
  s.Tk = integer(o.Get("Tk"), "Tk");
  s.Hq = integer(o.Get("Hq"), "Hq", 1);
  s.Hkv = integer(o.Get("Hkv"), "Hkv", 1);
  s.D = integer(o.Get("D"), "D", 1);
  if (s.Hq % s.Hkv) range_error(env, "Hq must be a multiple of Hkv");
  s.q_stride = integer(o.Get("qStride"), "qStride");
  s.k_stride = integer(o.Get("kStride"), "kStride");
  s.v_stride = integer(o.Get("vStride"), "vStride");
  s.o_stride = integer(o.Get("oStride"), "oStride");
  if (s.q_stride < s.Hq * s.D || s.o_stride < s.Hq * s.D) range_error(env, "q/out stride must be >= Hq*D");
  if (s.k_stride < s.Hkv * s.D || s.v_stride < s.Hkv * s.D) range_error(env, "k/v stride must be >= Hkv*D");
  s.scale = number(o.Get("scale"), "scale");
  s.causal = boolean(o.Get("causal"), "causal");
  if (s.causal && s.Tk < s.Tq) range_error(env, "causal attention needs Tk >= Tq");
  U8 km = u8(o.Get("keyMask"), "keyMask", true);
  if (km.p) need(env, km.n, s.B * s.Tk, "keyMask");
  s.key_mask = km.p;
  I32 qs = i32(o.Get("qSeg"), "qSeg", true), ks = i32(o.Get("kSeg"), "kSeg", true);
  if ((qs.p == nullptr) != (ks.p == nullptr)) type_error(env, "qSeg and kSeg go together");
  if (qs.p) {
    need(env, qs.n, s.B * s.Tq, "qSeg");
    need(env, ks.n, s.B * s.Tk, "kSeg");
  }
  s.q_seg = qs.p;
  s.k_seg = ks.p;
  F32 am = f32(o.Get("addMask"), "addMask", true);
  s.add_mask_batched = !is_null(o.Get("addMaskBatched")) && boolean(o.Get("addMaskBatched"), "addMaskBatched");
  if (am.p) need(env, am.n, (s.add_mask_batched ? s.B : 1) * s.Tq * s.Tk, "addMask");
  s.add_mask = am.p;
  Napi::Value win = o.Get("window"), cap = o.Get("softcap");
  s.window = win.IsUndefined() || is_null(win) ? 0 : integer(win, "window");
  s.softcap = cap.IsUndefined() || is_null(cap) ? 0.f : number(cap, "softcap");
  if (s.softcap < 0) range_error(env, "softcap must be >= 0");
  return s;
}

void check_qkvo(Napi::Env env, const peft::AttentionShape& s, const F32& q, const F32& k, const F32& v,
                const F32& o, const char* qn, const char* kn, const char* vn, const char* on) {
  need(env, q.n, span(s.B * s.Tq, s.Hq * s.D, s.q_stride), qn);
  need(env, k.n, span(s.B * s.Tk, s.Hkv * s.D, s.k_stride), kn);
  need(env, v.n, span(s.B * s.Tk, s.Hkv * s.D, s.v_stride), vn);
  need(env, o.n, span(s.B * s.Tq, s.Hq * s.D, s.o_stride), on);
}

Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  peft::AttentionShape s = attn_shape(info[0]);
  F32 q = f32(info[1], "q"), k = f32(info[2], "k"), v = f32(info[3], "v"), o = f32(info[4], "out");
  F32 lse = f32(info[5], "lse", true);
  check_qkvo(env, s, q, k, v, o, "q", "k", "v", "out");
  if (lse.p) need(env, lse.n, s.B * s.Hq * s.Tq, "lse");
  peft::attention_forward(s, q.p, k.p, v.p, o.p, lse.p);
  return env.Undefined();
}

Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  peft::AttentionShape s = attn_shape(info[0]);
  F32 q = f32(info[1], "q"), k = f32(info[2], "k"), v = f32(info[3], "v"), o = f32(info[4], "out");
  F32 lse = f32(info[5], "lse"), dout = f32(info[6], "dout");
  F32 dq = f32(info[7], "dq", true), dk = f32(info[8], "dk", true), dv = f32(info[9], "dv", true);
  check_qkvo(env, s, q, k, v, o, "q", "k", "v", "out");
  need(env, lse.n, s.B * s.Hq * s.Tq, "lse");
  need(env, dout.n, span(s.B * s.Tq, s.Hq * s.D, s.o_stride), "dout");
  if (dq.p) need(env, dq.n, span(s.B * s.Tq, s.Hq * s.D, s.q_stride), "dq");
  if (dk.p) need(env, dk.n, span(s.B * s.Tk, s.Hkv * s.D, s.k_stride), "dk");
  if (dv.p) need(env, dv.n, span(s.B * s.Tk, s.Hkv * s.D, s.v_stride), "dv");
  peft::attention_backward(s, q.p, k.p, v.p, o.p, lse.p, dout.p, dq.p, dk.p, dv.p);
  return env.Undefined();
}

// ---- activations ---------------------------------------------------------------------------------------------
peft::Act act_kind(const Napi::Value& v) {
  int64_t k = integer(v, "activation");
  if (k > 4) range_error(v.Env(), "activation: unknown kind");
  return static_cast<peft::Act>(k);
}

Napi::Value ActForward(const Napi::CallbackInfo& info) {
  peft::Act a = act_kind(info[0]);
  F32 x = f32(info[1], "x"), y = f32(info[2], "y");
  need(info.Env(), y.n, x.n, "y");
  peft::act_forward(a, x.p, y.p, x.n);
  return info.Env().Undefined();
}

Napi::Value ActBackward(const Napi::CallbackInfo& info) {
  peft::Act a = act_kind(info[0]);
  F32 x = f32(info[1], "x"), dy = f32(info[2], "dy"), dx = f32(info[3], "dx");
  need(info.Env(), dy.n, x.n, "dy");
  need(info.Env(), dx.n, x.n, "dx");
  peft::act_backward(a, x.p, dy.p, dx.p, x.n);
  return info.Env().Undefined();
}

Napi::Value SwigluForward(const Napi::CallbackInfo& info) {
  F32 g = f32(info[0], "g"), u = f32(info[1], "u"), y = f32(info[2], "y");
  need(info.Env(), u.n, g.n, "u");
  need(info.Env(), y.n, g.n, "y");
  peft::swiglu_forward(g.p, u.p, y.p, g.n);
  return info.Env().Undefined();
}

Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  F32 g = f32(info[0], "g"), u = f32(info[1], "u"), dy = f32(info[2], "dy");
  F32 dg = f32(info[3], "dg", true), du = f32(info[4], "du", true);
  need(info.Env(), u.n, g.n, "u");
  need(info.Env(), dy.n, g.n, "dy");
  if (dg.p) need(info.Env(), dg.n, g.n, "dg");
  if (du.p) need(info.Env(), du.n, g.n, "du");
  peft::swiglu_backward(g.p, u.p, dy.p, dg.p, du.p, g.n);
  return info.Env().Undefined();
}

// ---- loss / optimiser -------------------------------------------------------------------------------------------
// crossEntropy(logits, labels, N, V, ignoreIndex, dlogits|null, gradScale) -> [lossSum, count]
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  F32 logits = f32(info[0], "logits");
  I32 labels = i32(info[1], "labels");
  int64_t N = integer(info[2], "N"), V = integer(info[3], "V", 1);
  int32_t ignore = static_cast<int32_t>(number(info[4], "ignoreIndex"));
  F32 dl = f32(info[5], "dlogits", true);
  float gs = number(info[6], "gradScale");
  need(env, logits.n, N * V, "logits");
  need(env, labels.n, N, "labels");
  if (dl.p) need(env, dl.n, N * V, "dlogits");
  int64_t count = 0, bad = -1;
  double loss = peft::cross_entropy(logits.p, labels.p, N, V, ignore, dl.p, gs, &count, &bad);
  if (bad >= 0)
    range_error(env, "label " + std::to_string(labels.p[bad]) + " at row " + std::to_string(bad) +
                         " is outside [0, " + std::to_string(V) + ") and is not the ignore index");
  Napi::Array r = Napi::Array::New(env, 2);
  r.Set(0u, Napi::Number::New(env, loss));
  r.Set(1u, Napi::Number::New(env, static_cast<double>(count)));
  return r;
}

Napi::Value AdamwStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  F32 p = f32(info[0], "param"), g = f32(info[1], "grad"), m = f32(info[2], "expAvg"), v = f32(info[3], "expAvgSq");
  need(env, g.n, p.n, "grad");
  need(env, m.n, p.n, "expAvg");
  need(env, v.n, p.n, "expAvgSq");
  peft::adamw_step(p.p, g.p, m.p, v.p, p.n, number(info[4], "lr"), number(info[5], "beta1"), number(info[6], "beta2"),
                   number(info[7], "eps"), number(info[8], "weightDecay"), integer(info[9], "step", 1));
  return env.Undefined();
}

// ---- elementwise -------------------------------------------------------------------------------------------------
Napi::Value Add(const Napi::CallbackInfo& info) {
  F32 a = f32(info[0], "a"), b = f32(info[1], "b"), o = f32(info[2], "out");
  need(info.Env(), b.n, a.n, "b");
  need(info.Env(), o.n, a.n, "out");
  peft::add(a.p, b.p, o.p, a.n);
  return info.Env().Undefined();
}
Napi::Value Axpy(const Napi::CallbackInfo& info) {
  float alpha = number(info[0], "alpha");
  F32 x = f32(info[1], "x"), y = f32(info[2], "y");
  need(info.Env(), y.n, x.n, "y");
  peft::axpy(alpha, x.p, y.p, x.n);
  return info.Env().Undefined();
}
Napi::Value Scale(const Napi::CallbackInfo& info) {
  F32 x = f32(info[0], "x");
  float alpha = number(info[1], "alpha");
  F32 o = f32(info[2], "out");
  need(info.Env(), o.n, x.n, "out");
  peft::scale(x.p, alpha, o.p, x.n);
  return info.Env().Undefined();
}
Napi::Value Mul(const Napi::CallbackInfo& info) {
  F32 a = f32(info[0], "a"), b = f32(info[1], "b"), o = f32(info[2], "out");
  need(info.Env(), b.n, a.n, "b");
  need(info.Env(), o.n, a.n, "out");
  peft::mul(a.p, b.p, o.p, a.n);
  return info.Env().Undefined();
}
Napi::Value MulAcc(const Napi::CallbackInfo& info) {
  F32 a = f32(info[0], "a"), b = f32(info[1], "b"), o = f32(info[2], "out");
  need(info.Env(), b.n, a.n, "b");
  need(info.Env(), o.n, a.n, "out");
  peft::mul_acc(a.p, b.p, o.p, a.n);
  return info.Env().Undefined();
}
Napi::Value MulRow(const Napi::CallbackInfo& info) {
  F32 x = f32(info[0], "x"), w = f32(info[1], "w"), o = f32(info[2], "out");
  int64_t rows = integer(info[3], "rows"), D = integer(info[4], "D");
  bool acc = boolean(info[5], "accumulate");
  need(info.Env(), x.n, rows * D, "x");
  need(info.Env(), w.n, D, "w");
  need(info.Env(), o.n, rows * D, "out");
  peft::mul_row(x.p, w.p, o.p, rows, D, acc);
  return info.Env().Undefined();
}
Napi::Value AddRow(const Napi::CallbackInfo& info) {
  F32 x = f32(info[0], "x"), b = f32(info[1], "b");
  int64_t rows = integer(info[2], "rows"), D = integer(info[3], "D");
  need(info.Env(), x.n, rows * D, "x");
  need(info.Env(), b.n, D, "b");
  peft::add_row(x.p, b.p, rows, D);
  return info.Env().Undefined();
}
Napi::Value SumRows(const Napi::CallbackInfo& info) {
  F32 a = f32(info[0], "a"), b = f32(info[1], "b", true), o = f32(info[2], "out");
  int64_t rows = integer(info[3], "rows"), D = integer(info[4], "D");
  need(info.Env(), a.n, rows * D, "a");
  if (b.p) need(info.Env(), b.n, rows * D, "b");
  need(info.Env(), o.n, D, "out");
  peft::sum_rows(a.p, b.p, o.p, rows, D);
  return info.Env().Undefined();
}
Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  F32 x = f32(info[0], "x");
  return Napi::Number::New(info.Env(), peft::sum_squares(x.p, x.n));
}
Napi::Value DropoutForward(const Napi::CallbackInfo& info) {
  F32 x = f32(info[0], "x"), o = f32(info[1], "out");
  float p = number(info[2], "p");
  int64_t seed = integer(info[3], "seed");
  need(info.Env(), o.n, x.n, "out");
  if (!(p >= 0.f && p < 1.f)) range_error(info.Env(), "p must be in [0, 1)");
  peft::dropout_forward(x.p, o.p, x.n, p, static_cast<uint64_t>(seed));
  return info.Env().Undefined();
}
Napi::Value DropoutBackward(const Napi::CallbackInfo& info) {
  F32 dy = f32(info[0], "dy"), dx = f32(info[1], "dx");
  float p = number(info[2], "p");
  int64_t seed = integer(info[3], "seed");
  need(info.Env(), dx.n, dy.n, "dx");
  if (!(p >= 0.f && p < 1.f)) range_error(info.Env(), "p must be in [0, 1)");
  peft::dropout_backward(dy.p, dx.p, dy.n, p, static_cast<uint64_t>(seed));
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto def = [&](const char* name, Napi::Function::Callback cb) { exports.Set(name, Napi::Function::New(env, cb, name)); };
  def("noop", Noop);
  def("numThreads", NumThreads);
  def("setNumThreads", SetNumThreads);
  def("kernelName", KernelName);
  def("kernelInfo", KernelInfo);
  def("gemm", Gemm);
  def("gemmQ4", GemmQ4);
  def("gemmBf16Dot", GemmBf16Dot);
  def("dequantQ4", DequantQ4);
  def("embeddingForward", EmbeddingForward);
  def("embeddingBackward", EmbeddingBackward);
  def("rmsnormForward", RmsnormForward);
  def("rmsnormBackward", RmsnormBackward);
  def("layernormForward", LayernormForward);
  def("layernormBackward", LayernormBackward);
  def("ropeTable", RopeTable);
  def("ropeApply", RopeApply);
  def("attentionForward", AttentionForward);
  def("attentionBackward", AttentionBackward);
  def("actForward", ActForward);
  def("actBackward", ActBackward);
  def("swigluForward", SwigluForward);
  def("swigluBackward", SwigluBackward);
  def("crossEntropy", CrossEntropy);
  def("adamwStep", AdamwStep);
  def("add", Add);
  def("axpy", Axpy);
  def("scale", Scale);
  def("mul", Mul);
  def("mulAcc", MulAcc);
  def("mulRow", MulRow);
  def("addRow", AddRow);
  def("sumRows", SumRows);
  def("sumSquares", SumSquares);
  def("dropoutForward", DropoutForward);
  def("dropoutBackward", DropoutBackward);
  return exports;
}

}  // namespace

NODE_API_MODULE(peft_native, Init)
