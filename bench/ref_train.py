"""PyTorch + HF PEFT reference for bench/train.ts: LoRA (r=8, alpha=16, all linear layers) training
steps on a Llama of the given shape (random init, float32, CPU), printing one JSON line with
tokens/s and peak RSS.

--autocast bf16 runs forward and loss under torch.autocast("cpu", dtype=torch.bfloat16) (PyTorch's
strongest stock CPU path: matmuls in bf16 with float32 accumulation, parameters and optimizer float32).
Besides wall-clock tokens/s it prints tokens per CPU-second / threads (steadier on a shared machine).

Usage: python bench/ref_train.py --case smol|stories --batch B --seq T --steps N [--threads 2] [--autocast bf16]
"""
import argparse
import contextlib
import json
import resource
import time

import torch

SHAPES = {
    # SmolLM2-135M: hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, vocab 49152, tied
    "smol": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048),
    # stories260K: hidden 64, 5 layers, 8 heads, 4 KV heads, intermediate 172, vocab 512, tied
    "stories": dict(hidden_size=64, num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=4,
                    intermediate_size=172, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=512),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[a.case], rms_norm_eps=1e-5, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).float()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, cfg.vocab_size, (a.batch, a.seq), generator=g)
    times, cpu = [], []
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.autocast == "bf16" else contextlib.nullcontext
    for i in range(a.warmup + a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        with ctx():
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    measured = times[a.warmup:]
    cpu_s = sum(cpu[a.warmup:]) / a.threads
    tokens = a.batch * a.seq
    print(json.dumps({
        "impl": "pytorch+peft", "case": a.case, "autocast": a.autocast, "tokens_per_second": tokens * len(measured) / sum(measured),
        "cpu_tokens_per_second": tokens * len(measured) / cpu_s,
        "step_seconds": sum(measured) / len(measured), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch": torch.__version__, "threads": a.threads,
    }))


if __name__ == "__main__":
    main()
