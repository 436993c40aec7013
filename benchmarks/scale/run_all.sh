#!/usr/bin/env bash
# The machinery-at-scale benchmarks (see benchmarks/scale/README.md): stand-in trials with
# synthetic metrics driving the real samplers, storages, worker loop, Ray backend and report.
# Not a compression result. Results: benchmarks/scale/results/*.json.
#
#   benchmarks/scale/run_all.sh            # about 45 minutes on a shared 2-core machine
#   benchmarks/scale/run_all.sh --quick    # smoke versions, a few minutes
#
# Needs root for PostgreSQL (Debian's postgresql package: the server is started on 127.0.0.1
# when it is down, and stopped again).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

quick=()
if [[ "${1:-}" == "--quick" ]]; then
  quick=(--quick)
fi

python benchmarks/scale/sampler_latency.py "${quick[@]}"
# One run per storage (and, for the databases, per study size) keeps each under ten minutes:
# 32 workers each reading a 5,000-trial database take minutes just to start on 2 cores.
python benchmarks/scale/storage_throughput.py "${quick[@]}" --storages journal \
  --name storage_throughput-journal
for storage in sqlite postgresql; do
  python benchmarks/scale/storage_throughput.py "${quick[@]}" --storages "$storage" \
    --prefill 0 --name "storage_throughput-$storage"
  if [[ ${#quick[@]} -eq 0 ]]; then
    python benchmarks/scale/storage_throughput.py --storages "$storage" --prefill 5000 \
      --workers 1,32 --name "storage_throughput-$storage-5000"
  fi
done
# The goal: 32 workers on a 5,000-trial study with the recommended sampler (TPE), trials long
# enough that the workers are not all asking at once (20 s here instead of 10 minutes).
if [[ ${#quick[@]} -eq 0 ]]; then
  for storage in postgresql journal; do
    python benchmarks/scale/storage_throughput.py --storages "$storage" --workers 32 \
      --prefill 5000 --sampler tpe --duration 20 --trials 96 --name "goal_check-$storage"
  done
else
  python benchmarks/scale/storage_throughput.py --quick --storages journal --workers 8 \
    --prefill 500 --sampler tpe --duration 2 --trials 16 --name goal_check
fi
python benchmarks/scale/ray_overhead.py "${quick[@]}"
if [[ ${#quick[@]} -eq 0 ]]; then
  # Free CPUs (0.05 per trial) instead of every CPU taken (0.25 x 8).
  python benchmarks/scale/ray_overhead.py --cpus-per-trial 0.05 --trials 100 \
    --name ray_overhead-slack
  # A 5,000-trial study: every Ray worker reads it once, then incrementally.
  python benchmarks/scale/ray_overhead.py --prefill 5000 --trials 100 \
    --name ray_overhead-5000
fi
python benchmarks/scale/report_scale.py "${quick[@]}"
