"""Loads an adapter directory with HF PEFT on its base model and reports every warning emitted.

Usage: peft_load_check.py BASE_DIR ADAPTER_DIR
Prints JSON {"warnings": [...], "max_abs_logit_delta": float}; exit 0 when the load emits no
warning (python warnings or transformers/peft log records at WARNING or above), 1 otherwise.
"""
import json
import logging
import sys
import warnings

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

base_dir, adapter_dir = sys.argv[1], sys.argv[2]
records = []


class Collect(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            records.append(f"{record.name}: {record.getMessage()}")


handler = Collect()
for name in ("peft", "transformers", "huggingface_hub", ""):
    logging.getLogger(name).addHandler(handler)

model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
ids = torch.tensor([[1, 50, 120, 260, 301]])
with torch.no_grad():
    base_logits = model(ids).logits
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    peft_model = PeftModel.from_pretrained(model, adapter_dir)
    with torch.no_grad():
        logits = peft_model(ids).logits
records += [f"{w.category.__name__}: {w.message}" for w in caught]
print(json.dumps({"warnings": records, "max_abs_logit_delta": float((logits - base_logits).abs().max())}))
sys.exit(1 if records else 0)
