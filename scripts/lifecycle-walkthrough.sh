#!/bin/sh
# The adapter lifecycle of README "Adapter lifecycle", end to end on the bundled model:
# train → doctor → push → promote (a failing gate, then a passing one) → serve prod → push v2 →
# promote → rollback, plus deploy and export-job. Run from the repository root; writes out/lifecycle.
set -eu
peft() { node --import tsx src/cli/bin.ts "$@"; }
OUT=out/lifecycle
rm -rf "$OUT"
export PEFT_REGISTRY="$PWD/$OUT/registry"
GRIMM=data/grimms_fairy_tales/grimms_fairy_tales_body.txt
TINY=data/tinystories_val_sample/tinystories_val_head.txt

echo '$ peft doctor --data' "$GRIMM" '--num-examples 1 --max-seq-length 24'
peft doctor --data "$GRIMM" --num-examples 1 --max-seq-length 24
echo '$ peft train … --max-steps 60 --output' "$OUT/tales-v1"
peft train --data "$GRIMM" --max-steps 60 --output "$OUT/tales-v1" --forgetting-data "$TINY" --max-forgetting-examples 50 --max-eval-examples 16 | tail -3
echo '$ peft doctor --adapter' "$OUT/tales-v1" '--target vllm'
peft doctor --adapter "$OUT/tales-v1" --target vllm
echo '$ peft registry push tales' "$OUT/tales-v1"
peft registry push tales "$OUT/tales-v1" --message "60 steps"
echo '$ peft registry promote tales@1 --to prod --gate examples/lifecycle/gate-strict.yaml'
peft registry promote tales@1 --to prod --gate examples/lifecycle/gate-strict.yaml || echo "(exit $?)"
echo '$ peft registry promote tales@1 --to prod --gate examples/lifecycle/gate.yaml'
peft registry promote tales@1 --to prod --gate examples/lifecycle/gate.yaml
echo '$ peft serve --registry $PEFT_REGISTRY --port 8011 &'
if curl -sf localhost:8011/health >/dev/null 2>&1; then echo "port 8011 is in use" >&2; exit 1; fi
node --import tsx src/cli/bin.ts serve --registry "$PEFT_REGISTRY" --port 8011 --registry-poll-ms 200 > "$OUT/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
for i in $(seq 1 100); do curl -sf localhost:8011/health >/dev/null 2>&1 && break; sleep 0.3; done
ask() {
  curl -s localhost:8011/v1/completions -H 'Content-Type: application/json' -d "{\"model\": \"$1\", \"prompt\": \"The king said\", \"max_tokens\": 16, \"temperature\": 0}" |
    node -e 'let s = ""; process.stdin.on("data", (d) => { s += d; }).on("end", () => { const r = JSON.parse(s); console.log(r.model + ":" + JSON.stringify(r.choices[0].text)); })'
}
echo '$ curl … "model": "tales"'; ask tales
echo '$ peft train … --max-steps 100 --output' "$OUT/tales-v2"
peft train --data "$GRIMM" --max-steps 100 --output "$OUT/tales-v2" --forgetting-data "$TINY" --max-forgetting-examples 50 --max-eval-examples 16 | tail -3
echo '$ peft registry push tales' "$OUT/tales-v2"
peft registry push tales "$OUT/tales-v2" --message "100 steps"
echo '$ peft registry diff tales@1 tales@2'
peft registry diff tales@1 tales@2
echo '$ peft registry promote tales@2 --to prod --gate examples/lifecycle/gate.yaml'
peft registry promote tales@2 --to prod --gate examples/lifecycle/gate.yaml || echo "(exit $?)"
sleep 1
echo '$ curl … "model": "tales"'; ask tales
echo '$ peft registry rollback tales'
peft registry rollback tales
sleep 1
echo '$ curl … "model": "tales"'; ask tales
echo '$ curl … "model": "tales@2"'; ask tales@2
echo '$ peft registry list'
peft registry list
echo '$ peft deploy --target vllm --from tales --output' "$OUT/vllm"
peft deploy --target vllm --from tales --output "$OUT/vllm"
echo '$ peft deploy --target llama.cpp --from tales --output' "$OUT/llama.cpp"
peft deploy --target llama.cpp --from tales --output "$OUT/llama.cpp"
echo '$ peft export-job --target trl --from-run' "$OUT/tales-v1" "--output $OUT/trl-job --num-processes 2"
peft export-job --target trl --from-run "$OUT/tales-v1" --output "$OUT/trl-job" --num-processes 2
