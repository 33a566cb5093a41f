# shellcheck shell=bash
# Shared by weir's scripts (source it; it runs nothing by itself):
#   log/warn/die   messages on stderr, prefixed with $LOG_PREFIX
#   is_root
#   run_logged LOG CMD...   run CMD with its output appended to LOG; on
#                           failure show the end of LOG and die
#   find_go MIN [WHY]       the path of a Go >= MIN, or die saying why Go is
#                           needed (WHY) and what was found
#   version_at_least HAVE MIN

LOG_PREFIX=${LOG_PREFIX:-weir}

log()  { printf '%s: %s\n' "$LOG_PREFIX" "$*" >&2; }
warn() { printf '%s: WARNING: %s\n' "$LOG_PREFIX" "$*" >&2; }
die()  { printf '%s: ERROR: %s\n' "$LOG_PREFIX" "$*" >&2; exit 1; }

is_root() { [[ $(id -u) -eq 0 ]]; }

run_logged() {
  local logf=$1 rc=0
  shift
  printf '\n=== %s: (%s) %s\n' "$(date -u +%FT%TZ)" "$PWD" "$*" >>"$logf"
  "$@" >>"$logf" 2>&1 </dev/null || rc=$?
  if ((rc != 0)); then
    tail -n 40 "$logf" >&2
    die "'$*' failed (exit $rc); full log: $logf"
  fi
}

# sort -V puts the smaller first; HAVE is new enough when MIN comes first.
version_at_least() {
  [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]
}

find_go() {
  local min=$1 why=${2:-to build the pinned Go tools} g v
  if command -v go >/dev/null 2>&1; then
    g=$(command -v go)
  elif [[ -x /usr/local/go/bin/go ]]; then
    g=/usr/local/go/bin/go
  else
    die "go not found (need Go >= $min $why)"
  fi
  v=$("$g" env GOVERSION) # e.g. go1.26.8
  v=${v#go}
  version_at_least "$v" "$min" || die "Go $v is too old: need >= $min $why"
  echo "$g"
}
