#!/usr/bin/env bash
# Logging helpers for recipe scripts (Kaldi/ESPnet style). Source it: . utils/log.sh
#
#   log "stage 1: data preparation"
#   -> 2026-01-31T12:00:00 (run.sh:42) stage 1: data preparation      (on stderr)
#   die "missing ${dir}/wav.scp; run stage 1 first"   # logs "ERROR: ..." and exits 1

log() {
    local caller=${BASH_SOURCE[1]:-$0}
    echo "$(date '+%Y-%m-%dT%H:%M:%S') (${caller##*/}:${BASH_LINENO[0]}) $*" >&2
}

die() {
    local caller=${BASH_SOURCE[1]:-$0}
    echo "$(date '+%Y-%m-%dT%H:%M:%S') (${caller##*/}:${BASH_LINENO[0]}) ERROR: $*" >&2
    exit 1
}
