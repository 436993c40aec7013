#!/usr/bin/env bash
# The Fashion-MNIST benchmark, end to end through the ranksearch commands:
# search and baselines (inside `ranksearch search`), latency, report, headline numbers.
# Needs the real data: apt-get install -y dataset-fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-runs/fashion-mnist-resnet20}
WORKERS=${WORKERS:-2}
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# made a training step 3x slower.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
start=$(date +%s)
# A search that dies (a kill, a crash) resumes where it stopped when rerun; do so a few times.
for attempt in 1 2 3 4 5; do
  if ranksearch search search_spaces/fashion_mnist_resnet20.yaml --run-dir "$RUN" \
       --workers "$WORKERS" --quiet; then
    break
  fi
  echo "search exited with an error (attempt $attempt); resuming" >&2
done
# The trials timed their models while the other worker trained on the same cores: time every
# model again, one at a time, for the latency front (resumes where it stopped). Not under the
# passive OpenMP policy: sleeping threads add their wake-ups to every operator.
env -u OMP_WAIT_POLICY ranksearch latency "$RUN" --repeats 100
ranksearch report "$RUN" --out reports/fashion-mnist-resnet20
end=$(date +%s)
ranksearch status "$RUN"
python benchmarks/fashion_mnist_resnet20/summarize.py "$RUN" --wall-time $((end - start))
