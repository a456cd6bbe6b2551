#!/usr/bin/env bash
# fastops/dev/build.sh: builds the kernel harness (check_kernels.c, one translation unit, no Python).
#
#   fastops/dev/build.sh [native|asan|aarch64|all] [OUTDIR]
#
#   native   check_kernels          gcc -O3, the x86 (or host) instances
#   asan     check_kernels_asan     -O1 -fsanitize=address,undefined: tails must stay in bounds (all of
#                                   the ISAs take minutes to build; ASAN_CFLAGS="-DDEV_AVX512=0
#                                   -DDEV_AVX2=0" leaves two out, as tests/test_kernel_harness.py does)
#   aarch64  check_kernels_aarch64  aarch64-linux-gnu-gcc -O3 -static: NEON + generic, run it under
#                                   qemu-aarch64 (Debian: gcc-aarch64-linux-gnu, qemu-user)
#   all      the three, side by side (the default)
#
# OUTDIR defaults to fastops/dev/build (git-ignored). CC and AARCH64_CC override the compilers,
# EXTRA_CFLAGS (e.g. -Werror) adds flags to every build, ASAN_CFLAGS to the sanitizer build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
what="${1:-all}"
out="${2:-$here/build}"
mkdir -p "$out"
src="$here/check_kernels.c"
cc="${CC:-gcc}"
acc="${AARCH64_CC:-aarch64-linux-gnu-gcc}"
# gnu11, not c11: it keeps -ffp-contract=fast, as setup.py builds the extension
flags=(-O3 -std=gnu11 -fno-trapping-math -Wall -Wextra -pthread ${EXTRA_CFLAGS:-})
sanitize=(-O1 -g1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
          ${ASAN_CFLAGS:-})

build() {
    case "$1" in
        native) "$cc" "${flags[@]}" "$src" -o "$out/check_kernels" -lm ;;
        asan) "$cc" "${flags[@]}" "${sanitize[@]}" "$src" -o "$out/check_kernels_asan" -lm ;;
        aarch64) "$acc" "${flags[@]}" -static "$src" -o "$out/check_kernels_aarch64" -lm ;;
        *) echo "usage: $0 [native|asan|aarch64|all] [OUTDIR]" >&2; return 2 ;;
    esac
}

if [ "$what" = all ]; then
    pids=()
    for t in native asan aarch64; do build "$t" & pids+=($!); done
    rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    exit $rc
fi
build "$what"
