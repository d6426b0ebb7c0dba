#!/usr/bin/env bash
# Expose a local waverify through an ngrok tunnel and print how to register the webhook
# with Meta. Nothing secret is printed: the verify token and the app secret appear only as
# placeholders.
set -euo pipefail

INSPECT_API="http://127.0.0.1:4040/api/tunnels"
WAIT_SECONDS="${WAVERIFY_NGROK_WAIT:-20}"

usage() {
  cat <<'EOF'
Usage: scripts/ngrok.sh [--print-only HTTPS_URL]

  (no option)              start `ngrok http <port>` for the port in WAVERIFY_BIND
                           (default 127.0.0.1:8080), wait for its https address, print the
                           webhook URL and the registration steps, then keep the tunnel
                           open until Ctrl-C
  --print-only HTTPS_URL   start nothing; print the steps for an existing public URL
  -h, --help               this text

Environment: WAVERIFY_BIND (host:port of waverify), WAVERIFY_VERIFY_TOKEN (checked for
presence only, never printed), WAVERIFY_NGROK_WAIT (seconds to wait for the tunnel, 20).
EOF
}

die() {
  printf 'ngrok.sh: %s\n' "$1" >&2
  exit "${2:-1}"
}

print_steps() {
  local base="${1%/}"
  local hook="${base}/webhook"

  cat <<EOF

Webhook URL: ${hook}

Register it with Meta in one of two ways (waverify must be running: Meta checks the URL
at once with GET ${hook}?hub.mode=subscribe&hub.verify_token=...&hub.challenge=...).

(a) App Dashboard
    1. Open your app at developers.facebook.com, then WhatsApp > Configuration.
    2. Under "Webhook", choose Edit and enter
         Callback URL:  ${hook}
         Verify token:  the value of WAVERIFY_VERIFY_TOKEN
       then "Verify and save".
    3. Under "Webhook fields", subscribe to the field: messages

(b) Graph API, with an app access token "<app-id>|<app-secret>" (type it yourself; keep it
    out of shared shell history):

    curl -X POST 'https://graph.facebook.com/<version>/<app-id>/subscriptions' \\
      --data-urlencode 'object=whatsapp_business_account' \\
      --data-urlencode 'callback_url=${hook}' \\
      --data-urlencode 'verify_token=<the value of WAVERIFY_VERIFY_TOKEN>' \\
      --data-urlencode 'fields=messages' \\
      --data-urlencode 'access_token=<app-id>|<app-secret>'

Also check that the app is subscribed to the WhatsApp Business Account, or no statuses
arrive: GET (or POST to subscribe) https://graph.facebook.com/<version>/<waba-id>/subscribed_apps
with the system-user access token.

For SMS (Twilio) status callbacks, start waverify with this address as its public URL:
    WAVERIFY_PUBLIC_URL=${base}
(the callbacks go to ${base}/webhook/sms, and their signatures are checked against it).

A free ngrok address changes every time ngrok starts: register the new URL each time.
EOF
  if [[ -z "${WAVERIFY_VERIFY_TOKEN-}" ]]; then
    printf '\nNote: WAVERIFY_VERIFY_TOKEN is not set in this shell; waverify needs it to answer the check.\n'
  fi
}

check_url() {
  local url="$1"
  [[ "$url" == https://?* ]] || die "the public URL must start with https:// (Meta accepts only https callbacks): $url" 2
  [[ "$url" =~ ^[A-Za-z0-9:/?#@!\$\&\(\)*+,\;=._~%-]+$ ]] || die "the public URL has characters not allowed here: $url" 2
}

# Print the first https public_url found in an ngrok /api/tunnels answer (read on stdin).
https_url_from_tunnels() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import json, sys
try:
    data = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
for tunnel in data.get("tunnels") or []:
    url = tunnel.get("public_url") or ""
    if url.startswith("https://"):
        print(url)
        break
'
  else
    grep -o '"public_url" *: *"https://[^"]*"' | head -n 1 | sed 's/.*"\(https:[^"]*\)"$/\1/' || true
  fi
}

mode=run
public_url=""
while (($# > 0)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --print-only)
      (($# >= 2)) || die "--print-only needs a URL" 2
      mode=print
      public_url="$2"
      shift 2
      ;;
    --print-only=*)
      mode=print
      public_url="${1#--print-only=}"
      shift
      ;;
    *)
      usage >&2
      die "unexpected argument: $1" 2
      ;;
  esac
done

if [[ "$mode" == print ]]; then
  check_url "$public_url"
  print_steps "$public_url"
  exit 0
fi

bind="${WAVERIFY_BIND:-127.0.0.1:8080}"
port="${bind##*:}"
if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  die "cannot read a port from WAVERIFY_BIND=${bind}" 2
fi
[[ "$WAIT_SECONDS" =~ ^[0-9]+$ ]] || die "WAVERIFY_NGROK_WAIT must be a whole number of seconds" 2

if ! command -v ngrok >/dev/null 2>&1; then
  cat >&2 <<'EOF'
ngrok.sh: ngrok is not installed (not found on PATH).
  Install it from https://ngrok.com/download (a single binary; Linux packages and
  `snap install ngrok` exist too), then link your account once with
    ngrok config add-authtoken <your-ngrok-token>
  and run this script again. If you already have a public https URL, use
    scripts/ngrok.sh --print-only https://your.public.host
EOF
  exit 1
fi
command -v curl >/dev/null 2>&1 || die "curl is required to read ngrok's local API"

if curl --silent --max-time 2 --output /dev/null "$INSPECT_API"; then
  die "something already answers on ${INSPECT_API} (another ngrok agent?); stop it first, or use --print-only with its URL"
fi

log="$(mktemp "${TMPDIR:-/tmp}/waverify-ngrok.XXXXXX")"
ngrok_pid=""
cleanup() {
  if [[ -n "$ngrok_pid" ]] && kill -0 "$ngrok_pid" 2>/dev/null; then
    kill "$ngrok_pid" 2>/dev/null || true
    wait "$ngrok_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

printf 'Starting ngrok http %s (log: %s)\n' "$port" "$log"
ngrok http "$port" --log=stdout >"$log" 2>&1 &
ngrok_pid=$!

deadline=$((SECONDS + WAIT_SECONDS))
public_url=""
while ((SECONDS < deadline)); do
  if ! kill -0 "$ngrok_pid" 2>/dev/null; then
    printf 'ngrok.sh: ngrok exited early; last lines of its log:\n' >&2
    tail -n 20 "$log" >&2 || true
    exit 1
  fi
  answer="$(curl --silent --max-time 2 "$INSPECT_API" 2>/dev/null || true)"
  if [[ -n "$answer" ]]; then
    public_url="$(printf '%s' "$answer" | https_url_from_tunnels)"
    [[ -n "$public_url" ]] && break
  fi
  sleep 0.5
done

if [[ -z "$public_url" ]]; then
  printf 'ngrok.sh: no https tunnel appeared on %s within %s s; last lines of the log (%s):\n' \
    "$INSPECT_API" "$WAIT_SECONDS" "$log" >&2
  tail -n 20 "$log" >&2 || true
  exit 1
fi

check_url "$public_url"
print_steps "$public_url"
printf '\nTunnel %s -> 127.0.0.1:%s is open. Press Ctrl-C to close it.\n' "$public_url" "$port"
wait "$ngrok_pid" || true
printf 'ngrok.sh: ngrok stopped; see %s\n' "$log" >&2
