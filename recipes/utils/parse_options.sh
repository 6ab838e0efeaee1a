#!/usr/bin/env bash
# Command-line options for recipe scripts (the Kaldi idiom).
#
# Usage: define the defaults (and optionally help_message), then source this file WITHOUT
# arguments, so that it consumes the options from the caller's own "$@":
#
#     stage=0
#     stop_stage=100
#     use_gpu=false
#     help_message="Usage: $0 [--stage N] [--stop-stage N] [--use-gpu true|false] [-- hparams...]"
#     . ./utils/parse_options.sh
#     # "$@" now holds what is left, e.g. HyperPyYAML overrides: --lr=0.01 --batch_size=4
#
# Rules
#   --foo-bar VALUE, --foo_bar VALUE, --foo-bar=VALUE
#                   set the variable foo_bar, which must already be defined (otherwise:
#                   "unknown option --foo-bar", exit 1, with "did you mean --foo_bar?" when
#                   $help_message names an option spelt the same but for - and _). Dashes in
#                   the name become underscores.
#   true/false      when the default of a variable is true or false, the new value must be
#                   true or false too.
#   --help, -h      print $help_message (or a note that there is none) and exit 0.
#   --              stop; "--" is removed and everything after it stays in "$@".
#   other argument  the first argument that does not start with "--" stops parsing and
#                   stays in "$@" with everything after it.
# Sourcing with arguments (". parse_options.sh "$@"") would not work: bash restores the
# caller's "$@" when a sourced file given arguments returns.

while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h)
            if [ -n "${help_message:-}" ]; then
                printf '%s\n' "${help_message}"
            else
                echo "$0: no help message is defined (set help_message before sourcing parse_options.sh)"
            fi
            exit 0
            ;;
        --)
            shift
            break
            ;;
        --*)
            _po_option=${1%%=*}
            _po_name=${_po_option#--}
            _po_name=${_po_name//-/_}
            # the name must be a shell identifier that is already defined
            if [[ ! "${_po_name}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!_po_name+set}" ]; then
                # an option of the help message spelt the same without - and _ is what was meant
                _po_near=
                _po_b=${_po_option//[-_]/}
                for _po_known in $(printf '%s\n' "${help_message:-}" | grep -o -- '--[A-Za-z][A-Za-z0-9_-]*' | sort -u); do
                    _po_a=${_po_known//[-_]/}
                    [ "${_po_a,,}" = "${_po_b,,}" ] && _po_near=${_po_known}
                done
                echo "$0: unknown option ${_po_option}${_po_near:+ (did you mean ${_po_near}?)}" >&2
                if [[ "$1" == *=* ]]; then
                    echo "$0: (to pass hyperparameter overrides through, put them after --)" >&2
                fi
                exit 1
            fi
            if [[ "$1" == *=* ]]; then
                _po_value=${1#*=}
                _po_consumed=1
            else
                if [ $# -lt 2 ]; then
                    echo "$0: option ${_po_option} needs a value" >&2
                    exit 1
                fi
                _po_value=$2
                _po_consumed=2
            fi
            _po_old=${!_po_name}
            if [ "${_po_old}" = true ] || [ "${_po_old}" = false ]; then
                if [ "${_po_value}" != true ] && [ "${_po_value}" != false ]; then
                    echo "$0: option ${_po_option} takes true or false, got '${_po_value}'" >&2
                    exit 1
                fi
            fi
            printf -v "${_po_name}" '%s' "${_po_value}"
            shift "${_po_consumed}"
            ;;
        *)
            break
            ;;
    esac
done
unset _po_option _po_value _po_consumed _po_name _po_old _po_near _po_known _po_a _po_b
true
