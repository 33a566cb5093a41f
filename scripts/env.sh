# shellcheck shell=bash
# Source this file (`. scripts/env.sh`) to use the tools that
# scripts/bootstrap.sh installed. Safe to source more than once.
#   WEIR_TOOLS      cache dir of the Go-built tools (default /var/cache/weir/tools)
#   CNI_TOOLS_PATH  directory of the CNI reference plugins ($WEIR_TOOLS/cni)
#   PATH            gets $WEIR_TOOLS/bin (cnitool) prepended
export WEIR_TOOLS="${WEIR_TOOLS:-/var/cache/weir/tools}"
export CNI_TOOLS_PATH="${WEIR_TOOLS}/cni"
case ":${PATH:-}:" in
  *":${WEIR_TOOLS}/bin:"*) ;;
  *) export PATH="${WEIR_TOOLS}/bin${PATH:+:${PATH}}" ;;
esac
