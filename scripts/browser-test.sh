#!/usr/bin/env bash
# The web page of `llamagen serve` in a real headless browser (tests/browser/page_test.py). Installs Debian's
# chromium, chromium-driver and python3-selenium when missing (root + apt), builds nothing: run after
# ./scripts/setup.sh. Usage: scripts/browser-test.sh [SCREENSHOT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/llamagen
shot=${1:-target/serve-page.png}
[ -x "$bin" ] || { echo "browser-test: $bin missing: run ./scripts/setup.sh first" >&2; exit 1; }
if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && /usr/bin/python3 -c 'import selenium' 2>/dev/null; }; then
    echo "browser-test: installing chromium, chromium-driver, python3-selenium (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium chromium-driver python3-selenium >/dev/null
fi
tmp=$(mktemp -d)
log="$tmp/serve.log"
"$bin" serve --port 0 --max-batch 8 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 200); do grep -q 'listening on' "$log" && break; sleep 0.05; done
url=$(grep -o 'http://[0-9.:]*' "$log" | head -1)
[ -n "$url" ] || { echo "browser-test: the server did not start:" >&2; cat "$log" >&2; exit 1; }
"$bin" generate --quiet --class 7 --num-images 6 --seed 4 --out "$tmp/cli" 2>/dev/null
/usr/bin/python3 tests/browser/page_test.py "$url" "$tmp/cli" "$shot"
kill -TERM $pid
wait $pid
