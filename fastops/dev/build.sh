#!/usr/bin/env bash
# fastops/dev/build.sh: builds the kernel harness (check_kernels.c, one translation unit, no Python).
#
#   fastops/dev/build.sh [native|asan|aarch64|all] [OUTDIR]
#
#   native   check_kernels          gcc -O3, the x86 (or host) instances
#   asan     check_kernels_asan     the same with -fsanitize=address,undefined (tails must stay in bounds)
#   aarch64  check_kernels_aarch64  aarch64-linux-gnu-gcc -O3 -static: NEON + generic, run it under
#                                   qemu-aarch64 (Debian: gcc-aarch64-linux-gnu, qemu-user)
#   all      the three, side by side (the default)
#
# OUTDIR defaults to fastops/dev/build (git-ignored). CC, AARCH64_CC and EXTRA_CFLAGS (e.g. -Werror)
# override the compilers and add flags.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
what="${1:-all}"
out="${2:-$here/build}"
mkdir -p "$out"
src="$here/check_kernels.c"
cc="${CC:-gcc}"
acc="${AARCH64_CC:-aarch64-linux-gnu-gcc}"
# gnu11, not c11: it keeps -ffp-contract=fast, as setup.py builds the extension
flags=(-O3 -std=gnu11 -Wall -Wextra -pthread ${EXTRA_CFLAGS:-})
sanitize=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)

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
