#!/usr/bin/env bash
# Chromium for the chat page's browser test (tests/python/test_chat_page.py, driven by
# Playwright with `executable_path`; Playwright's own browser download is never used).
#
#   scripts/chromium.sh install
#       Makes sure Debian's `chromium` package is installed (apt-get, as root or through
#       passwordless sudo), with a small CJK font (`fonts-wqy-microhei`, so Chinese text
#       in the screenshots is not drawn as boxes), and prints the browser binary's path.
#       Fails with a clear message when it cannot be installed; never pretends.
set -euo pipefail
# shellcheck source=lib/debian-package.sh
. "$(dirname "$0")/lib/debian-package.sh"

die() {
  echo "scripts/chromium.sh: $*" >&2
  exit 1
}

# The browser itself rather than Debian's /usr/bin/chromium launcher script (which only
# adds desktop flags and a memory check that misparses on large hosts).
find_chromium() {
  [ -x /usr/lib/chromium/chromium ] && echo /usr/lib/chromium/chromium && return 0
  command -v chromium 2>/dev/null && return 0
  return 1
}

install_chromium() {
  local bin
  [ -d /usr/share/fonts/truetype/wqy ] || apt_install_package fonts-wqy-microhei
  if bin=$(find_chromium); then
    echo "$bin"
    return 0
  fi
  apt_install_package chromium
  bin=$(find_chromium) || die "the chromium package is installed but no chromium binary was found"
  echo "$bin"
}

case "${1:-}" in
  install) install_chromium ;;
  *) die "usage: scripts/chromium.sh install" ;;
esac
