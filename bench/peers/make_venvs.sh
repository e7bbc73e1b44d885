#!/usr/bin/env bash
# Makes the peer simulators' virtual environments for bench/w1_fedavg.py --peers:
#   bench/peers/.venv-flower  Flower's simulation engine (flwr[simulation]==1.42.*, Ray)
#   bench/peers/.venv-pfl     Apple's pfl-research simulator (pfl==0.6.0)
# torch is pinned to fed8's CPU wheel first, so no peer pulls a CUDA build.
# Usage: bash bench/peers/make_venvs.sh [flower|pfl|all]
set -euo pipefail
cd "$(dirname "$0")"
which="${1:-all}"
make() {  # name, packages...
  local name="$1"; shift
  if [ ! -x ".venv-$name/bin/python" ]; then python3 -m venv ".venv-$name"; fi
  ".venv-$name/bin/pip" install -q torch==2.13.0
  ".venv-$name/bin/pip" install -q torch==2.13.0 "$@"
  ".venv-$name/bin/python" -c "import torch; print('$name ready: torch', torch.__version__)"
}
case "$which" in
  flower) make flower 'flwr[simulation]==1.42.*' numpy pillow ;;
  pfl) make pfl 'pfl==0.6.0' numpy pillow ;;
  all) make flower 'flwr[simulation]==1.42.*' numpy pillow; make pfl 'pfl==0.6.0' numpy pillow ;;
  *) echo "usage: $0 [flower|pfl|all]" >&2; exit 2 ;;
esac
