#!/usr/bin/env bash
# Copy the record.json files of a preset's finished runs (no weights, no checkpoints) into results/records/,
# replacing the copy there: bash scripts/collect_records.sh minilm_glue [outputs]
set -euo pipefail
preset=${1:?usage: collect_records.sh <experiment_name> [output_root]}
root=${2:-${QPEFT_OUTPUT_DIR:-outputs}}
[ -d "$root/$preset" ] || { echo "no folder $root/$preset: finished runs of experiment=$preset live there" >&2; exit 2; }
dest=results/records/$preset
tmp=$(mktemp -d "$PWD/results/records/.collect-XXXXXX")
(cd "$root/$preset" && find . -name record.json -exec cp --parents {} "$tmp" \;)
chmod 755 "$tmp" && rm -rf "$dest" && mv "$tmp" "$dest"
echo "$(find "$dest" -name record.json | wc -l) records in $dest"
