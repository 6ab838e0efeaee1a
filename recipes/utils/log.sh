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

# require_bash MAJOR MINOR: stop with one line when this bash is older (e.g. `wait -n -p` needs 5.1)
require_bash() {
    local major=$1 minor=$2
    if (( BASH_VERSINFO[0] < major || (BASH_VERSINFO[0] == major && BASH_VERSINFO[1] < minor) )); then
        echo "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}) ERROR: needs bash >= ${major}.${minor}, this is ${BASH_VERSION}:" \
             "install a newer bash (RHEL 8 and Ubuntu 20.04 ship 4.4 and 5.0) and run it with that bash" >&2
        exit 1
    fi
}
