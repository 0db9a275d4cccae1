#!/usr/bin/env bash
# Issue 12's CUDA check: tests, golden vectors per dtype, model/pipeline benchmarks, ComfyUI run.
#
#   tools/gpu_check.sh [gpu_check.py options]         e.g. --sections bench,profile
#
# Environment: PYTHON (default python3), OUT (results folder, default ./gpu_out),
# COMFY_TGZ (ComfyUI source tarball for the ComfyUI section; default ../shared/comfyui/ComfyUI-0.3.64.tar.gz),
# WHEELS (folder of wheels the ComfyUI server needs but the machine lacks, e.g. av, torchsde, trampoline;
# installed into a scratch site folder used by the ComfyUI server only).
# Prints short tables at the end; full logs, results.json and tables.md are under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
COMFY_TGZ=${COMFY_TGZ:-../shared/comfyui/ComfyUI-0.3.64.tar.gz}
extra=()
if [ -f "$COMFY_TGZ" ]; then extra+=(--comfy-tgz "$COMFY_TGZ"); fi
if [ -n "${WHEELS:-}" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  SITE=${SITE:-/tmp/gpu_check_site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    && extra+=(--site "$SITE") || echo "wheel install failed; the ComfyUI section may not start"
fi
nvidia-smi 2>/dev/null | head -15
PYTHONUNBUFFERED=1 "$PY" tools/gpu_check.py --out "$OUT" "${extra[@]}" "$@"
