#!/usr/bin/env bash
# Creates .venv-ref: the Python reference environment (torch CPU, transformers, peft, safetensors,
# numpy) used to regenerate fixtures and run the side-by-side benchmarks. Uses the machine's local
# wheel index; the test suite never needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-ref
.venv-ref/bin/pip install -q --retries 0 --index-url file:///opt/pypi/simple torch transformers peft safetensors numpy \
  || .venv-ref/bin/pip install -q torch transformers peft safetensors numpy
.venv-ref/bin/python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
