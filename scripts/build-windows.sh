#!/usr/bin/env bash
# Builds the Windows edge (and gateway and certs): `rtmpq.exe` for x86_64-pc-windows-gnu, on
# this Debian machine, without rustup's target download (the Rust distribution server may be
# out of reach). Debian's own Rust (rustc-web, cargo-web: 1.96) builds the standard library for
# the target from its source (rust-web-src, `-Zbuild-std`), and MinGW links it (and builds
# ring's C and assembly). Installs what it needs; prints where the exe is and its size.
#
#   scripts/build-windows.sh          # what users download: target/windows/x86_64-pc-windows-gnu/dist/rtmpq.exe
#   scripts/build-windows.sh --wine   # the build the wine test runs: target/windows-wine/rtmpq.exe
#
# `--wine` differs from the shipped build only where wine 8 differs from Windows, and never
# ships: quinn-udp 0.5.16 patched (scripts/wine/quinn-udp-0.5.16-wine.patch: wine has no
# IPV6_V6ONLY on an IPv4 socket and no ECN socket options; quinn-udp 0.6 tolerates the second,
# quinn 0.11 cannot take 0.6), and beside the exe a stand-in bcryptprimitives.dll (wine 8 lacks
# ProcessPrng, which Rust's std calls and Windows 10 has).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

wine=false
[ "${1:-}" = "--wine" ] && wine=true

need=()
[ -x /usr/bin/cargo ] || need+=(cargo-web)
[ -x /usr/bin/rustc ] || need+=(rustc-web)
[ -d /usr/lib/rustlib/src/rust/library ] || need+=(rust-web-src)
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || need+=(gcc-mingw-w64-x86-64)
if $wine; then
  command -v wine >/dev/null 2>&1 || need+=(wine wine64)
  command -v patch >/dev/null 2>&1 || need+=(patch)
  command -v rsync >/dev/null 2>&1 || need+=(rsync)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

target=x86_64-pc-windows-gnu
# Debian's compiler, not rustup's (which has no std for the target and cannot fetch one);
# `-Zbuild-std` is a nightly flag, which Debian's stable compiler takes under RUSTC_BOOTSTRAP.
export RUSTC=/usr/bin/rustc
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
export AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar
build() {
  /usr/bin/cargo build "$@" --profile dist --bin rtmpq \
    -Zbuild-std=std,panic_abort --target "$target"
}
started=$(date +%s)

if ! $wine; then
  build --locked --target-dir target/windows
  exe="target/windows/$target/dist/rtmpq.exe"
  echo "built $exe: $(stat -c %s "$exe") bytes in $(( $(date +%s) - started )) s"
  exit 0
fi

# The wine build: a copy of the sources (the patch rewrites the copy's Cargo.lock, never the
# repository's), quinn-udp patched, its own target directory.
out="$root/target/windows-wine"
src="$out/src"
mkdir -p "$src"
rsync -a --delete --exclude /target --exclude /.git "$root/" "$src/"
/usr/bin/cargo fetch --locked --manifest-path "$root/Cargo.toml" >/dev/null
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/quinn-udp-0.5.16 | head -1)
rm -rf "$out/quinn-udp"
cp -r "$registry" "$out/quinn-udp"
patch -s -d "$out/quinn-udp" -p1 < "$root/scripts/wine/quinn-udp-0.5.16-wine.patch"
(cd "$src" && build --config "patch.crates-io.quinn-udp.path=\"$out/quinn-udp\"" \
  --target-dir "$out/target")
cp "$out/target/$target/dist/rtmpq.exe" "$out/rtmpq.exe"
x86_64-w64-mingw32-gcc -O2 -shared -o "$out/bcryptprimitives.dll" \
  "$root/scripts/wine/bcryptprimitives.c" -lbcrypt
echo "built $out/rtmpq.exe (for wine): $(stat -c %s "$out/rtmpq.exe") bytes in $(( $(date +%s) - started )) s"
