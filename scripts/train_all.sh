#!/usr/bin/env bash
# Retrain the shipped models as the store holds them (models/README.md says how each was made).
# For each task, the reference ("seed") architecture goes into build/reference/ for comparison,
# then the improved one into the model store, its card recording the seed's validation figure.
# Then what the store holds on top of that:
#   digits:   the next version declares the MNIST framing, same weights (scripts/frame_digits.py);
#   catsdogs: the residual network as the next version (issue 15);
# Every shipped version was validated on the stratified split, so that is the split used here
# (the tasks' defaults are now stricter: `grouped`, and frame ranges for fruits; models/README.md).
# Usage: scripts/train_all.sh [DATA_DIR] [OUT] [TASK...]
set -euo pipefail
data=${1:-../shared/datasets}
out=${2:-models}
shift $(( $# > 2 ? 2 : $# ))
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(signs digits catsdogs fruits)
declare -A folder=([digits]=mnist [fruits]=fruits-360 [signs]=signs [catsdogs]=catsdogs)
ref=build/reference
newest() { ls "$1" | grep -E '^[0-9]+$' | sort -n | tail -1; }
for task in "${tasks[@]}"; do
  split=(--split stratified)
  python -m training train "$task" --data "$data/${folder[$task]}" --arch seed --out "$ref" "${split[@]}"
  reference="$ref/$task/$(newest "$ref/$task")"
  python -m training train "$task" --data "$data/${folder[$task]}" --arch improved --out "$out" \
    --reference "$reference" "${split[@]}"
  case $task in
    digits) python scripts/frame_digits.py --model "$out/digits/$(newest "$out/digits")" \
      --data "$data/${folder[$task]}" --out "$out" ;;
    catsdogs) python -m training train catsdogs --data "$data/${folder[$task]}" --arch residual --out "$out" \
      --reference "$reference" "${split[@]}" ;;
  esac
done
