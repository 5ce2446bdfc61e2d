#!/usr/bin/env bash
# Retrain all four shipped models: for each task, the reference ("seed") architecture into
# build/reference/ for comparison, then the improved one into the model store, its card
# recording the seed's validation accuracy. Usage: scripts/train_all.sh [DATA_DIR] [OUT] [TASK...]
set -euo pipefail
data=${1:-../shared/datasets}
out=${2:-models}
shift $(( $# > 2 ? 2 : $# ))
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(signs digits catsdogs fruits)
declare -A folder=([digits]=mnist [fruits]=fruits-360 [signs]=signs [catsdogs]=catsdogs)
ref=build/reference
for task in "${tasks[@]}"; do
  python -m training train "$task" --data "$data/${folder[$task]}" --arch seed --out "$ref"
  latest=$(ls "$ref/$task" | grep -E '^[0-9]+$' | sort -n | tail -1)
  python -m training train "$task" --data "$data/${folder[$task]}" --arch improved --out "$out" \
    --reference "$ref/$task/$latest"
done
