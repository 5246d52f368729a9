#!/usr/bin/env bash
# Pack a pip Triton release small enough to travel to the lent GPU machine (64 MiB per call with the tree):
# the cp312 wheel unpacked, without the AMD code generator, CUPTI, proton, the unused ptxas and the
# instrumentation plugins, libtriton.so stripped of its debug information, then xz'd (Triton 3.9.0: 53 MB,
# 3.7.1: 46 MB). On the device (ab_triton_release.sh does this): unpack it into a folder and put that folder first on
# PYTHONPATH (the image's torch 2.11 then imports that Triton). usage: slim_triton.sh VERSION OUT.tar.xz
set -euo pipefail
ver=$1 out=$(realpath -m "$2") work=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 -d "$work" "triton==$ver"
mkdir "$work/whl" "$work/slim"
(cd "$work/whl" && unzip -q "$work"/triton-"$ver"-*.whl)
# 3.9 compiles sm_90a with ptxas-blackwell (CUDA 13.4); 3.7 with ptxas (CUDA 12.8): keep the one used.
case $ver in 3.[0-8].*) drop=ptxas-blackwell ;; *) drop=ptxas ;; esac
(cd "$work/whl" && tar cf - --exclude='__pycache__' --exclude='triton/backends/amd/lib' \
    --exclude='triton/backends/nvidia/lib/cupti*' --exclude="triton/backends/nvidia/bin/$drop" \
    --exclude='triton/backends/nvidia/bin/nvdisasm' --exclude='triton/_C/libproton.so' \
    --exclude='triton/instrumentation' --exclude='triton/FileCheck' triton "triton-$ver.dist-info") \
    | (cd "$work/slim" && tar xf -)
strip "$work/slim/triton/_C/libtriton.so"
(cd "$work/slim" && tar cf - triton "triton-$ver.dist-info" | xz -T0 -9 > "$out")
rm -rf "$work"
ls -l "$out"
