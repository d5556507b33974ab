// Fused forward/backward kernels. Shapes are row-major; "rows" is the flattened batch*time axis.
// Backward kernels ACCUMULATE into gradient buffers (dx += ...), so callers pass zeroed buffers
// for a first contribution; a null gradient pointer means "not needed" and skips that work.
#pragma once
#include <cstdint>

namespace peft {

// ---- embedding -----------------------------------------------------------------------------
// out[r, :] = W[ids[r], :]; W is float32 or bfloat16 (w_bf16 != null), [vocab, D].
// Returns -1 on success, else the row whose id is outside [0, vocab).
int64_t embedding_forward(const float* w, const uint16_t* w_bf16, int64_t vocab, int64_t D,
                          const int32_t* ids, int64_t rows, float* out);
// dW[ids[r], :] += dout[r, :] (serial per vocabulary row to stay deterministic).
void embedding_backward(const float* dout, const int32_t* ids, int64_t rows, int64_t D, float* dw);

// ---- normalisation ---------------------------------------------------------------------------
// RMSNorm (Zhang & Sennrich 2019; HF LlamaRMSNorm): y = x * rsqrt(mean(x^2) + eps) * w.
// rstd[r] (may be null) receives rsqrt(mean(x^2)+eps) for the backward pass.
void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t D, float eps, float* y,
                     float* rstd);
void rmsnorm_backward(const float* dy, const float* x, const float* w, const float* rstd, int64_t rows,
                      int64_t D, float* dx, float* dw);
// LayerNorm (Ba et al. 2016): y = (x - mean) * rstd * w + b (w, b may be null = 1, 0).
void layernorm_forward(const float* x, const float* w, const float* b, int64_t rows, int64_t D,
                       float eps, float* y, float* mean, float* rstd);
void layernorm_backward(const float* dy, const float* x, const float* w, const float* mean,
                        const float* rstd, int64_t rows, int64_t D, float* dx, float* dw, float* db);

// ---- rotary position embedding -----------------------------------------------------------------
// RoPE (Su et al. 2021) in HF's rotate_half convention (transformers modeling_llama.py
// apply_rotary_pos_emb): per head the pairs are (x[i], x[i + D/2]), angle = pos * inv_freq[i]
// computed in float32, y[i] = x[i] cos - x[i+D/2] sin, y[i+D/2] = x[i+D/2] cos + x[i] sin.
// rope_table fills cos/sin [rows, D/2] (times attn_scaling, as HF scales them).
void rope_table(const int32_t* pos, int64_t rows, const float* inv_freq, int64_t half, float attn_scaling,
                float* cos_out, float* sin_out);
// x: [rows, H, D] with row stride `stride` (>= H*D); sign = +1 rotates, sign = -1 applies the
// transpose (the backward pass). y may alias x; when accumulate, y += result.
void rope_apply(const float* x, float* y, int64_t rows, int64_t H, int64_t D, int64_t stride,
                const float* cos_t, const float* sin_t, int sign, bool accumulate);

// ---- attention ----------------------------------------------------------------------------------
struct AttentionShape {
  int64_t B, Tq, Tk, Hq, Hkv, D;
  int64_t q_stride, k_stride, v_stride, o_stride;  // row strides (elements) of q, k, v, out
  float scale;
  bool causal;              // query i sees keys j <= (Tk - Tq) + i
  const uint8_t* key_mask;  // [B, Tk] 1 = attend, or null
  const int32_t* q_seg;     // [B, Tq] segment ids (packing), with k_seg, or null; a key with
                            // k_seg < 0 is visible to every segment (prefix tokens)
  const int32_t* k_seg;     // [B, Tk]
  const float* add_mask;    // additive mask [B or 1, Tq, Tk], or null
  bool add_mask_batched;    // add_mask has a batch axis
  int64_t window;           // > 0: sliding window, query i sees keys j > (Tk - Tq) + i - window
                            // (the window most recent positions, itself included; transformers'
                            // sliding_window_overlay); 0 = all
  float softcap;            // > 0: scores become softcap * tanh(score / softcap) before the masks
                            // (Gemma 2 attn_logit_softcapping); 0 = none
};
// out[b, t, h, :] = softmax(scale * q k^T + mask) v with grouped-query heads (h -> h / (Hq/Hkv)).
// lse [B, Hq, Tq] (may be null) receives each row's log-sum-exp for the backward pass; a row with
// no visible key outputs zeros and lse = -inf. One head's score matrix is live per thread.
void attention_forward(const AttentionShape& s, const float* q, const float* k, const float* v,
                       float* out, float* lse);
// Gradients of the above given dout; dq/dk/dv accumulate and may be null. Recomputes the scores
// from q, k and lse (as FlashAttention's backward does, Dao et al. 2022, Alg. 4).
void attention_backward(const AttentionShape& s, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv);

// ---- activations ------------------------------------------------------------------------------
enum class Act { Silu = 0, GeluTanh = 1, GeluExact = 2, Relu = 3, Identity = 4 };
void act_forward(Act a, const float* x, float* y, int64_t n);
// dx += dy * act'(x)
void act_backward(Act a, const float* x, const float* dy, float* dx, int64_t n);
// SwiGLU (Shazeer 2020): y = silu(g) * u.
void swiglu_forward(const float* g, const float* u, float* y, int64_t n);
void swiglu_backward(const float* g, const float* u, const float* dy, float* dg, float* du, int64_t n);

// ---- loss ----------------------------------------------------------------------------------------
// Softmax cross-entropy over logits [N, V] with integer labels; label == ignore_index contributes
// nothing. Returns the summed loss (float64) and writes the count of counted rows. When dlogits is
// non-null it receives (softmax - onehot) * grad_scale for counted rows and 0 for ignored rows
// (dlogits may alias logits). A label outside [0, V) that is not ignore_index is reported through
// bad_row (>= 0) and nothing is written.
double cross_entropy(const float* logits, const int32_t* labels, int64_t N, int64_t V, int32_t ignore_index,
                     float* dlogits, float grad_scale, int64_t* count, int64_t* bad_row);

// ---- optimiser -----------------------------------------------------------------------------------
// AdamW (Loshchilov & Hutter 2019), exactly as torch.optim.AdamW (non-amsgrad, non-fused):
// p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, int64_t step);

// ---- elementwise ---------------------------------------------------------------------------------
void add(const float* a, const float* b, float* out, int64_t n);          // out = a + b
void axpy(float alpha, const float* x, float* y, int64_t n);              // y += alpha * x
void scale(const float* x, float alpha, float* out, int64_t n);           // out = alpha * x
void mul(const float* a, const float* b, float* out, int64_t n);          // out = a * b
void mul_acc(const float* a, const float* b, float* out, int64_t n);      // out += a * b
// out[r, :] = x[r, :] * w  (w: [D]); accumulate: out += ...
void mul_row(const float* x, const float* w, float* out, int64_t rows, int64_t D, bool accumulate);
// x[r, :] += b
void add_row(float* x, const float* b, int64_t rows, int64_t D);
// out[d] += sum_r a[r, d] * (b ? b[r, d] : 1)
void sum_rows(const float* a, const float* b, float* out, int64_t rows, int64_t D);
double sum_squares(const float* x, int64_t n);
// Inverted dropout (Srivastava et al. 2014) with a counter-based RNG: element i is kept when
// hash(seed, i) >= p; out = keep ? x/(1-p) : 0. The mask is never stored: backward regenerates it.
void dropout_forward(const float* x, float* out, int64_t n, float p, uint64_t seed);
// dx += keep ? dy/(1-p) : 0 (same seed as the forward call)
void dropout_backward(const float* dy, float* dx, int64_t n, float p, uint64_t seed);

}  // namespace peft
