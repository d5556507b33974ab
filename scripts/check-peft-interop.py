#!/usr/bin/env python3
"""Checks that adapters written by peft-ts load in Hugging Face PEFT and give the same logits.

For each adapter directory (adapter_config.json + adapter_model.safetensors, as peft-ts's
saveAdapter / `peft train` write them) this script

  1. runs `npx tsx scripts/interop-logits.ts logits ...`, which loads the base model and the
     adapter in peft-ts and writes the logits of one forward pass over a fixed text, together with
     the token ids it used (or reads such a file given with --logits);
  2. loads the same base model with transformers (float32) and the adapter with
     `peft.PeftModel.from_pretrained`, runs the same token ids, and
  3. compares the logits: every row (prompt tuning prepends its virtual tokens in both
     libraries, so the row counts match; if they ever differ, the last rows are compared and
     this is reported), max |Δ| against --tol.

It is generic over peft_type: whatever PeftModel.from_pretrained loads (LORA, IA3,
PREFIX_TUNING, PROMPT_TUNING, ...). BOTTLENECK adapters have no HF PEFT implementation and are
reported as skipped.

  --make TYPE[,TYPE...]   first write sample adapters with peft-ts
                          (`interop-logits.ts make`: LORA, LORA_RSLORA, LORA_DORA, IA3, PREFIX_TUNING,
                          PREFIX_TUNING_PROJ, PROMPT_TUNING, or ALL) into a temporary directory
                          and check those too.

Each result also reports how far the adapter moves HF's logits from the base model's
(adapter_effect); an adapter that moves them by no more than 10 × --tol proves nothing and is
reported as NO-EFFECT.

Exit status: 0 all within tolerance, 1 a mismatch, NO-EFFECT or a load failure, 2 bad usage.
Needs torch, transformers, peft, safetensors, numpy (the .venv-ref environment) and node/npx.
The vitest suite never runs this.

Examples:
  .venv-ref/bin/python scripts/check-peft-interop.py --make ALL
  .venv-ref/bin/python scripts/check-peft-interop.py --adapter runs/my-lora --model models/stories260K
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "models", "stories260K")
DEFAULT_TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside."
MAKE_TYPES = ["LORA", "LORA_RSLORA", "LORA_DORA", "IA3", "PREFIX_TUNING", "PREFIX_TUNING_PROJ", "PROMPT_TUNING"]
NO_HF_IMPLEMENTATION = {"BOTTLENECK"}


def run_ts(*args: str) -> None:
    cmd = ["npx", "--no-install", "tsx", os.path.join(ROOT, "scripts", "interop-logits.ts"), *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr.strip() or r.stdout.strip()}")


def read_ts_logits(path: str):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        logits = f.get_tensor("logits")
    if "input_ids" not in meta:
        raise ValueError(f"{path}: no input_ids in the metadata (not written by interop-logits.ts?)")
    return logits, json.loads(meta["input_ids"]), meta


def hf_logits(model_dir: str, adapter_dir: str, input_ids: list[int]):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    x = torch.tensor([input_ids], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=x).logits[0].float()
        with model.disable_adapter():
            plain = model(input_ids=x).logits[0].float()
    return out, plain


def check(adapter_dir: str, model_dir: str, text: str, tol: float, logits_file: str | None, workdir: str) -> dict:
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        peft_type = json.load(f).get("peft_type")
    result: dict = {"adapter": adapter_dir, "peft_type": peft_type}
    if peft_type in NO_HF_IMPLEMENTATION:
        result.update(status="skipped", reason=f"HF PEFT has no {peft_type} implementation")
        return result
    if logits_file is None:
        logits_file = os.path.join(workdir, f"logits-{abs(hash(adapter_dir))}.safetensors")
        run_ts("logits", "--adapter", adapter_dir, "--model", model_dir, "--text", text, "--output", logits_file)
    ts, ids, meta = read_ts_logits(logits_file)

    from transformers import AutoTokenizer

    hf_ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    result["tokenizer_ids_match"] = hf_ids == ids
    hf, plain = hf_logits(model_dir, adapter_dir, ids)
    rows = min(ts.shape[0], hf.shape[0])
    result.update(
        tokens=len(ids),
        virtual_tokens=int(meta.get("virtual_tokens", 0)),
        rows_ts=int(ts.shape[0]),
        rows_hf=int(hf.shape[0]),
        rows_compared=rows,
    )
    d = (ts[-rows:] - hf[-rows:]).abs()
    result["max_abs_diff"] = float(d.max())
    result["max_abs_diff_text_rows"] = float(d[-len(ids):].max())
    result["max_abs_logit"] = float(hf.abs().max())
    result["argmax_agree"] = bool((ts[-rows:].argmax(-1) == hf[-rows:].argmax(-1)).all())
    # how much the adapter moves HF's logits on the text rows: a check is only meaningful when
    # this is far above the tolerance
    result["adapter_effect"] = float((hf[-len(ids):] - plain[-len(ids):]).abs().max())
    ok = ts.shape == hf.shape and result["max_abs_diff"] <= tol
    result["status"] = "ok" if ok else "MISMATCH"
    if ok and result["adapter_effect"] <= 10 * tol:
        result["status"] = "NO-EFFECT"
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", action="append", default=[], help="adapter directory written by peft-ts (repeatable)")
    p.add_argument("--make", default="", help=f"comma-separated sample types to create first: {', '.join(MAKE_TYPES)} or ALL")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model directory (default: models/stories260K)")
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--tol", type=float, default=1e-4, help="max |logit difference| allowed (default 1e-4)")
    p.add_argument("--logits", help="use this logits file (from interop-logits.ts) instead of running it; one --adapter only")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    a = p.parse_args()

    make = [t.strip().upper() for t in a.make.split(",") if t.strip()]
    if make == ["ALL"]:
        make = MAKE_TYPES
    bad = [t for t in make if t not in MAKE_TYPES]
    if bad:
        p.error(f"unknown --make type(s) {bad}; choose from {MAKE_TYPES} or ALL")
    if not a.adapter and not make:
        p.error("give --adapter DIR and/or --make TYPES")
    if a.logits and (len(a.adapter) != 1 or make):
        p.error("--logits goes with exactly one --adapter")

    results = []
    with tempfile.TemporaryDirectory(prefix="peft-interop-") as work:
        adapters = [os.path.abspath(d) for d in a.adapter]
        for t in make:
            out = os.path.join(work, t.lower())
            run_ts("make", "--type", t, "--output", out, "--model", a.model)
            adapters.append(out)
        for d in adapters:
            try:
                results.append(check(d, a.model, a.text, a.tol, a.logits, work))
            except Exception as e:  # a load failure is a finding, not a crash
                results.append({"adapter": d, "status": "ERROR", "error": f"{type(e).__name__}: {e}"})
        for r in results:
            if r["adapter"].startswith(work):
                r["adapter"] = f"<sample {os.path.basename(r['adapter']).upper()}>"

    if a.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if r["status"] in ("ok", "MISMATCH", "NO-EFFECT"):
                print(f"{r['status']:9} {r['peft_type']:14} {r['adapter']}: max|Δlogit| {r['max_abs_diff']:.3e} over {r['rows_compared']} rows"
                      f" ({r['tokens']} tokens + {r['virtual_tokens']} virtual); adapter effect {r['adapter_effect']:.2f}; |logit| <= {r['max_abs_logit']:.1f};"
                      f" argmax agree: {r['argmax_agree']}; tokenizer ids match: {r['tokenizer_ids_match']}"
                      + ("" if r["rows_ts"] == r["rows_hf"] else f"; ROW COUNTS DIFFER: peft-ts {r['rows_ts']}, HF {r['rows_hf']}"))
            elif r["status"] == "skipped":
                print(f"skipped   {r['peft_type']:14} {r['adapter']}: {r['reason']}")
            else:
                print(f"ERROR     {'':14} {r['adapter']}: {r['error']}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
