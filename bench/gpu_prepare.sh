#!/usr/bin/env bash
# Prepare the one device run of issue 17 (bench/gpu_session.sh), here, at no device time.
#
# The H200 machine's image has PyTorch (2.11, CUDA 13), numpy, scipy, onnx, onnxruntime,
# safetensors, rich, matplotlib, Pillow, pytest and absl-py, but not dp-accounting or
# cryptography (fed8's other two dependencies), and nothing can be fetched there. This script
# downloads those as Python 3.12 x86-64 wheels into .whl/ (ignored by git through
# .git/info/exclude), which the run carries: device.run(command="bash bench/gpu_session.sh",
# carry=[".whl"], timeout_s=590). About 5 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 \
         manylinux_2_34_x86_64; do
  platforms+=(--platform "$p")
done
for spec in "dp-accounting==0.6.0" "dm-tree==0.1.10" "cryptography==50.0.2" "cffi==2.1.1" "pycparser==3.12"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$spec"
done
ls -la .whl
