/**
 * Compute dtype of the frozen base weights, PyTorch-autocast-like (`--compute-dtype bf16`).
 *
 * 'bf16': every frozen linear weight (the base q/k/v/o/gate/up/down and lm_head that no adapter
 * trains) is stored as bfloat16 (float32 weights rounded to nearest even) and multiplied with
 * Intel AMX tiles (TDPBF16PS) where the CPU has AMX-BF16, else AVX512_BF16's VDPBF16PS
 * (`native.kernelInfo().bf16Kernel` says which; PEFT_KERNELS=avx512 turns AMX off): the activations
 * are rounded to bf16 for the product and the products are summed in float32 — the numerics of `torch.autocast("cpu", dtype=torch.bfloat16)` for
 * matmuls. Trainable parts (LoRA A/B, adapters, modules_to_save copies), norms, embeddings,
 * attention, the loss and the optimizer stay float32; 4-bit (QLoRA) bases keep their own path.
 * Both the forward product x·Wᵀ and the input gradient dY·W use the bf16 path.
 *
 * 'float32' (the default everywhere) changes nothing. 'bf16' is refused with a PeftError on a CPU
 * without AVX512_BF16 (or when PEFT_KERNELS caps the kernels below avx512): there is no silent
 * fallback, so a run never reports bf16 numerics it did not use.
 */
import { PeftError } from '../errors.js';
import { native } from '../native/index.js';
import type { Weight } from '../tensor/index.js';
import { linearModules, type CausalLM } from './model.js';

export type ComputeDtype = 'float32' | 'bf16';
export const COMPUTE_DTYPES: ComputeDtype[] = ['float32', 'bf16'];

/** True when this CPU (and PEFT_KERNELS) allows `--compute-dtype bf16`. */
export function bf16ComputeAvailable(): boolean {
  return native.kernelInfo().bf16Dot;
}

/** bfloat16 bits of each float32 value, rounded to nearest even (NaN stays NaN, ±inf stays). */
export function toBf16Bits(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < u.length; i++) {
    const v = u[i];
    out[i] = (v & 0x7fffffff) > 0x7f800000 ? (v >>> 16) | 0x40 : ((v + 0x7fff + ((v >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

/**
 * Switches the frozen linear weights of `model` to `dtype` (see the module comment). Call it after
 * the adapters are attached, so trainable weights are known. Returns how many weights now
 * multiply in bf16 and how many stay as they were (trainable, 4-bit).
 * @throws PeftError for an unknown dtype, or 'bf16' where VDPBF16PS is unavailable.
 */
export function setComputeDtype(model: CausalLM, dtype: string): { bf16: number; other: number } {
  if (!COMPUTE_DTYPES.includes(dtype as ComputeDtype))
    throw new PeftError('unknown compute dtype', { field: '--compute-dtype', expected: COMPUTE_DTYPES.join(' or '), found: dtype });
  let bf16 = 0, other = 0;
  if (dtype === 'float32') {
    for (const m of linearModules(model)) if (m.weight.data.kind === 'bf16') m.weight.data.dot = false;
    return { bf16: 0, other: linearModules(model).length };
  }
  const info = native.kernelInfo();
  if (!info.bf16Dot)
    throw new PeftError('bf16 compute needs the AVX512_BF16 instruction VDPBF16PS, which this run cannot use', {
      field: '--compute-dtype',
      expected: 'a CPU with AVX512_BF16 (e.g. AMD Zen 4/5, Intel Cooper Lake, Sapphire Rapids) and PEFT_KERNELS unset, amx or avx512; or --compute-dtype float32',
      found: `kernel level ${info.level}, avx512_bf16 ${info.cpu.avx512_bf16 ? 'present' : 'absent'}`,
    });
  for (const m of linearModules(model)) {
    const d = m.weight.data;
    if (d.kind === 'bf16') {
      d.dot = true;
      bf16++;
    } else if (d.kind === 'f32' && !d.tensor.requiresGrad) {
      const w: Weight = { rows: m.weight.rows, cols: m.weight.cols, data: { kind: 'bf16', bits: toBf16Bits(d.tensor.data), dot: true } };
      m.weight = w;
      bf16++;
    } else {
      other++;
    }
  }
  return { bf16, other };
}
