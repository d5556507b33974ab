#!/usr/bin/env bash
# HF PEFT round trip of adapters trained with the CLI: trains each method briefly on the bundled
# Grimm text (LoRA all-linear, LoRA on full module paths of two layers, IA3, prefix, prompt,
# bottleneck), evaluates two with `peft eval --json`, then loads every adapter in HF PEFT and
# compares logits (scripts/check-peft-interop.py). Needs .venv-ref. Usage: scripts/interop-roundtrip.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
O=${1:-out/interop-roundtrip}
rm -rf "$O"; mkdir -p "$O"
peft() { node --import tsx src/cli/bin.ts "$@"; }
common=(--data data/grimms_fairy_tales/grimms_fairy_tales_body.txt --max-steps 5 --batch-size 4 --max-seq-length 64 --eval-every 0)
peft train "${common[@]}" --method lora --output "$O/lora" > "$O/lora.log" 2>&1
peft train "${common[@]}" --method lora --target-modules model.layers.1.self_attn.q_proj,model.layers.3.mlp.down_proj --output "$O/lora-paths" > "$O/lora-paths.log" 2>&1
peft train "${common[@]}" --method ia3 --output "$O/ia3" > "$O/ia3.log" 2>&1
peft train "${common[@]}" --method prefix --output "$O/prefix" > "$O/prefix.log" 2>&1
peft train "${common[@]}" --method prompt --output "$O/prompt" > "$O/prompt.log" 2>&1
peft train "${common[@]}" --method adapter --output "$O/adapter" > "$O/adapter.log" 2>&1
peft eval --data data/tinystories_val_sample/tinystories_val_head.txt --adapter "$O/lora-paths" --max-examples 20 --json > "$O/eval-lora-paths.json"
peft eval --data data/tinystories_val_sample/tinystories_val_head.txt --adapter "$O/prompt" --max-examples 20 --json > "$O/eval-prompt.json"
.venv-ref/bin/python scripts/check-peft-interop.py --adapter "$O/lora" --adapter "$O/lora-paths" --adapter "$O/ia3" \
  --adapter "$O/prefix" --adapter "$O/prompt" --adapter "$O/adapter" 2>&1 | tee "$O/interop.txt"
