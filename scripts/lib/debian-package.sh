# Sourced by scripts that need a Debian package (scripts/prometheus.sh, scripts/postgres.sh,
# scripts/chromium.sh, scripts/nginx.sh). Defines apt_install_package and package_binary.

# apt_install_package PACKAGE: installs Debian's PACKAGE with apt-get, as root or through
# passwordless sudo, refreshing the package lists once when the first try fails (fresh
# containers have none). Exits with a clear message when it cannot; never pretends.
apt_install_package() {
  local package=$1
  command -v apt-get >/dev/null 2>&1 ||
    { echo "$package is not installed and apt-get is not available; install $package by hand" >&2; exit 1; }
  local -a as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      as_root=(sudo -n)
    else
      echo "$package is not installed and installing it needs root: run \`sudo apt-get install $package\` (or run this as root)" >&2
      exit 1
    fi
  fi
  local -a apt_install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package")
  echo "installing Debian's $package package" >&2
  if ! "${as_root[@]}" "${apt_install[@]}" >&2; then
    "${as_root[@]}" apt-get update -q >&2 ||
      { echo "apt-get update failed (see above); cannot install $package" >&2; exit 1; }
    "${as_root[@]}" "${apt_install[@]}" >&2 ||
      { echo "apt-get install $package failed (see above)" >&2; exit 1; }
  fi
}

# package_binary PACKAGE BINARY: prints the path of BINARY (on PATH, else in /usr/sbin or
# /usr/bin), installing Debian's PACKAGE first when it is not there. Exits with a clear
# message when the package installs no such binary.
package_binary() {
  local package=$1 binary=$2
  find_binary "$binary" && return 0
  apt_install_package "$package"
  find_binary "$binary" ||
    { echo "the $package package is installed but no $binary binary was found" >&2; exit 1; }
}

# find_binary NAME: prints the path of the executable NAME, or fails.
find_binary() {
  local path
  command -v "$1" 2>/dev/null && return 0
  for path in "/usr/sbin/$1" "/usr/bin/$1"; do
    [ -x "$path" ] && echo "$path" && return 0
  done
  return 1
}
