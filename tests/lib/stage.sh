# Shell helpers shared by the lab and the test initramfs builder (source this file).

# stage_with_libs ROOT SRC DST: copy SRC to ROOT/DST; a dynamically linked executable
# also brings every shared library ldd names, at the same path under ROOT.
stage_with_libs() {
  local root=$1 src=$2 dst=$3 lib
  mkdir -p "$(dirname "$root$dst")"
  cp -a "$src" "$root$dst"
  [ -f "$src" ] && [ -x "$src" ] || return 0
  LC_ALL=C ldd "$src" >/dev/null 2>&1 || return 0 # static, or not an ELF
  for lib in $(LC_ALL=C ldd "$src" | grep -oE '/[^ ]+' | sort -u); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
