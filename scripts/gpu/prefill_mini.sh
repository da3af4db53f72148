#!/usr/bin/env bash
# A short device call for the kernel parity tests alone (tests/gpu/kernel_parity_test.cpp,
# the prefill cases of both paths included) when the full test binary cannot be afforded or
# does not build: compiles that one test file, its main and support files against a
# kvq_kernels library built beforehand (default .carry/h22/libkvq_kernels.a: carry it) and
# runs every "gpu kernels:" case. Output in /tmp/o (tar it into $OUT).
# Usage: LIB=path/to/libkvq_kernels.a bash scripts/gpu/prefill_mini.sh
set -uo pipefail
O=/tmp/o; mkdir -p $O
nvidia-smi --query-gpu=name,clocks.sm --format=csv | tee $O/device.txt
CXX=$(command -v g++ || echo /opt/gcc/bin/g++)
F="-std=c++20 -O2 -I. -I/usr/local/cuda/include -DKVQ_CATCH2_MAJOR=3"
$CXX $F -c tests/gpu/kernel_parity_test.cpp -o /tmp/kp.o & $CXX $F -c tests/support/gpu_main.cpp -o /tmp/gm.o &
$CXX $F -c tests/support/test_support.cpp -o /tmp/ts.o & $CXX $F -c formats/dtype.cpp -o /tmp/dt.o & $CXX $F -c formats/error.cpp -o /tmp/er.o & wait
$CXX /tmp/kp.o /tmp/gm.o /tmp/ts.o /tmp/dt.o /tmp/er.o ${LIB:-.carry/h22/libkvq_kernels.a} -L/usr/local/cuda/lib64 -lcudart -lcublas -lcublasLt -lCatch2 -o /tmp/kpt 2>&1 | tail -5
/tmp/kpt "gpu kernels:*" --durations yes > $O/kernel_tests.log 2>&1; echo "kernel parity exit $?"
grep -E "seed|cases run|passed|failed|FAILED|with expansion" $O/kernel_tests.log | head -30
grep -E "^prefill" $O/kernel_tests.log | awk '{print $1, $2, $3}' | sort | uniq -c
grep -E "^prefill" $O/kernel_tests.log | sort -t'(' -k2 -r | head -3
