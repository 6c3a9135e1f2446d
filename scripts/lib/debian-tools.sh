# shellcheck shell=bash
# Sourced by the scripts that need haproxy, nginx or promtool. Each ensure_* function sets an
# array (haproxy_cmd, nginx_cmd, promtool_cmd) that runs the tool: the one on PATH when there is
# one, otherwise Debian's package unpacked into a cache with `apt-get download` + `dpkg-deb -x`.
# Unpacking instead of installing means no package script starts a haproxy, nginx or
# Prometheus service on this machine; the scripts start and stop their own processes.
#
# The cache is ${XDG_CACHE_HOME:-$HOME/.cache}/herald-tools; after the first run nothing is
# downloaded again.

tools_cache=${XDG_CACHE_HOME:-$HOME/.cache}/herald-tools
tools_apt_updated=0

# unpack_debs NAME PACKAGE...: downloads the packages and unpacks them all into
# $tools_cache/NAME (replacing what was there).
unpack_debs() {
  local name=$1 root="$tools_cache/$1" deb
  shift
  echo "unpacking $* into $root (apt-get download)" >&2
  if ((!tools_apt_updated)); then
    apt-get update -qq
    tools_apt_updated=1
  fi
  rm -rf "$root" "$tools_cache/debs-$name"
  mkdir -p "$root" "$tools_cache/debs-$name"
  (cd "$tools_cache/debs-$name" && apt-get download -qq "$@" 2>/dev/null)
  for deb in "$tools_cache/debs-$name"/*.deb; do
    dpkg-deb -x "$deb" "$root"
  done
  rm -rf "$tools_cache/debs-$name"
}

# unpacked_cmd NAME BINARY: the command line that runs BINARY (a path inside the unpacked
# tree) with the tree's libraries found first.
unpacked_cmd() {
  local root="$tools_cache/$1"
  printf '%s\n' env "LD_LIBRARY_PATH=$root/usr/lib/$(uname -m)-linux-gnu" "$root/$2"
}

ensure_haproxy() {
  if command -v haproxy >/dev/null 2>&1; then
    haproxy_cmd=(haproxy)
    return 0
  fi
  mapfile -t haproxy_cmd < <(unpacked_cmd haproxy usr/sbin/haproxy)
  "${haproxy_cmd[@]}" -v >/dev/null 2>&1 && return 0
  unpack_debs haproxy haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1
  "${haproxy_cmd[@]}" -v >/dev/null
}

ensure_nginx() {
  if command -v nginx >/dev/null 2>&1; then
    nginx_cmd=(nginx)
    return 0
  fi
  mapfile -t nginx_cmd < <(unpacked_cmd nginx usr/sbin/nginx)
  "${nginx_cmd[@]}" -v >/dev/null 2>&1 && return 0
  unpack_debs nginx nginx nginx-common
  "${nginx_cmd[@]}" -v >/dev/null 2>&1
}

# promtool is part of Debian's prometheus package.
ensure_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    promtool_cmd=(promtool)
    return 0
  fi
  mapfile -t promtool_cmd < <(unpacked_cmd prometheus usr/bin/promtool)
  "${promtool_cmd[@]}" --version >/dev/null 2>&1 && return 0
  unpack_debs prometheus prometheus
  "${promtool_cmd[@]}" --version >/dev/null
}
