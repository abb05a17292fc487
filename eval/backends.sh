#!/usr/bin/env bash
# Compare the three answer backends on a question set:
#   extractive (no model), local (llama.cpp in a child process), openai (any
#   OpenAI-compatible server; here a llama.cpp server this script starts on
#   loopback, serving the same GGUF, so the HTTP path is exercised for real).
#
#   bash eval/backends.sh [SET] [OUT] [extra baokan eval args...]
#   bash eval/backends.sh eval/questions_seeds.jsonl eval/runs/backends-seeds
#   BAOKAN_LLM_MODEL_PATH=/models/qwen2.5-7b-instruct-q4_k_m.gguf bash eval/backends.sh
#
# To evaluate a hosted model instead, skip this script and run
#   BAOKAN_OPENAI_BASE_URL=... BAOKAN_OPENAI_MODEL=... BAOKAN_OPENAI_API_KEY=... \
#     .venv/bin/baokan eval --llm extractive,openai
set -euo pipefail
cd "$(dirname "$0")/.."
SET=${1:-eval/questions_seeds.jsonl}
OUT=${2:-eval/runs/backends-$(basename "$SET" .jsonl)}
shift $(( $# > 2 ? 2 : $# ))
PY=.venv/bin/python
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp -t baokan-llama-XXXX.log)
$PY -m rag.llamacpp serve --port "$PORT" ${BAOKAN_LLM_MODEL_PATH:+--model "$BAOKAN_LLM_MODEL_PATH"} >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  grep -q '^READY' "$LOG" && break
  kill -0 $SERVER 2>/dev/null || { echo "llama.cpp server failed to start; log: $LOG" >&2; exit 1; }
  sleep 0.2
done
grep -q '^READY' "$LOG" || { echo "llama.cpp server did not start in 60 s; log: $LOG" >&2; exit 1; }
export BAOKAN_OPENAI_BASE_URL="http://127.0.0.1:$PORT/v1"
export BAOKAN_OPENAI_MODEL=${BAOKAN_OPENAI_MODEL:-local-gguf}
export BAOKAN_OPENAI_API_KEY=${BAOKAN_OPENAI_API_KEY:-not-needed}
.venv/bin/baokan eval --set "$SET" --out "$OUT" --llm extractive,local,openai "$@"
