#!/usr/bin/env bash
# The Fashion-MNIST benchmark, end to end through the ranksearch commands:
# reference, search, baselines (inside `ranksearch search`), report, headline numbers.
# Needs the real data: apt-get install -y dataset-fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-runs/fashion-mnist-resnet20}
WORKERS=${WORKERS:-2}
start=$(date +%s)
ranksearch search search_spaces/fashion_mnist_resnet20.yaml --run-dir "$RUN" --workers "$WORKERS" --quiet
ranksearch report "$RUN" --out reports/fashion-mnist-resnet20
end=$(date +%s)
ranksearch status "$RUN"
python benchmarks/fashion_mnist_resnet20/summarize.py "$RUN" --wall-time $((end - start))
