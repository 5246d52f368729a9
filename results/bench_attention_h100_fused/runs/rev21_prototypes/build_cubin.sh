# Builds favor_dstate.cubin beside this script (sm_90a). Any nvcc >= 12.0 with ptxas for sm_90a works; the logged
# runs used a cubin built on the CPU machine with nvcc 13.0.88 from PyPI, no GPU needed:
#   pip install --target /tmp/cu "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" \
#       "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*"; export PATH=/tmp/cu/nvidia/cu13/bin:$PATH
# (nvidia-nvvm must match nvcc's release, or ptxas rejects the PTX version). On the device image: /usr/local/cuda/bin.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
"$NVCC" -arch=sm_90a -cubin -O3 --use_fast_math -Xptxas -v "$HERE/favor_dstate.cu" -o "$HERE/favor_dstate.cubin" 2>&1 \
  | grep -E "entry|Used|spill"
