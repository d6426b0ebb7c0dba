#!/usr/bin/env bash
# Sign a webhook body the way Meta does and POST it to a running waverify.
#
# The signature is "sha256=" + lowercase hex HMAC-SHA256 of the file's exact bytes, keyed
# with the app secret. The file is sent unchanged (curl --data-binary), so bodies with
# \uXXXX escapes, \/ or raw UTF-8 keep verifying.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/send-webhook.sh [--secret SECRET] FILE [URL]

  FILE      webhook body to send, byte for byte (e.g. fixtures/webhooks/status-sent.json)
  URL       where to POST; default http://<WAVERIFY_BIND>/webhook, or
            http://127.0.0.1:8080/webhook when WAVERIFY_BIND is unset

The HMAC key is WAVERIFY_APP_SECRET from the environment. --secret overrides it, but a
value on the command line is visible to other local users in the process list: prefer the
environment. Prints the HTTP status and the answer body; exits 1 on a non-2xx answer,
2 on a usage or setup error.
EOF
}

die() {
  printf 'send-webhook: %s\n' "$1" >&2
  exit "${2:-2}"
}

secret="${WAVERIFY_APP_SECRET-}"
secret_given=0
positional=()
while (($# > 0)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --secret)
      (($# >= 2)) || die "--secret needs a value"
      secret="$2"
      secret_given=1
      shift 2
      ;;
    --secret=*)
      secret="${1#--secret=}"
      secret_given=1
      shift
      ;;
    --)
      shift
      positional+=("$@")
      break
      ;;
    -?*)
      usage >&2
      die "unknown option: $1"
      ;;
    *)
      positional+=("$1")
      shift
      ;;
  esac
done

if ((${#positional[@]} < 1 || ${#positional[@]} > 2)); then
  usage >&2
  exit 2
fi
file="${positional[0]}"

if [[ -z "$secret" ]]; then
  if ((secret_given)); then
    die "--secret was given an empty value"
  fi
  die "WAVERIFY_APP_SECRET is not set (export it, or pass --secret)"
fi
[[ -f "$file" && -r "$file" ]] || die "cannot read file: $file"

default_url() {
  local bind="${WAVERIFY_BIND:-127.0.0.1:8080}" host port
  port="${bind##*:}"
  host="${bind%:*}"
  # A wildcard bind address is reachable through loopback.
  case "$host" in
    "" | 0.0.0.0) host=127.0.0.1 ;;
    "[::]") host="[::1]" ;;
  esac
  printf 'http://%s:%s/webhook' "$host" "$port"
}
url="${positional[1]:-$(default_url)}"

command -v curl >/dev/null 2>&1 || die "curl is required"

# The secret goes to the HMAC tool through the environment (python3) rather than argv
# where possible; openssl only takes the key as an argument.
if command -v python3 >/dev/null 2>&1; then
  signature="$(
    WAVERIFY_SIGN_KEY="$secret" python3 -c '
import hashlib, hmac, os, sys
key = os.environ["WAVERIFY_SIGN_KEY"].encode("utf-8")
with open(sys.argv[1], "rb") as f:
    print(hmac.new(key, f.read(), hashlib.sha256).hexdigest())
' "$file"
  )"
elif command -v openssl >/dev/null 2>&1; then
  signature="$(openssl dgst -sha256 -hmac "$secret" -r <"$file")"
  signature="${signature%% *}"
else
  die "python3 or openssl is required to compute the signature"
fi
signature="$(printf '%s' "$signature" | tr 'A-F' 'a-f')"
[[ "$signature" =~ ^[0-9a-f]{64}$ ]] || die "could not compute the signature"

answer="$(mktemp)"
trap 'rm -f "$answer"' EXIT

status="$(
  curl --silent --show-error --max-time 30 \
    --output "$answer" --write-out '%{http_code}' \
    -X POST \
    -H 'Content-Type: application/json' \
    -H "X-Hub-Signature-256: sha256=${signature}" \
    --data-binary "@${file}" \
    -- "$url"
)" || die "request to $url failed" 1

printf 'HTTP %s\n' "$status"
cat "$answer"
# Keep the prompt on its own line when the answer has no final newline.
if [[ -s "$answer" && -n "$(tail -c 1 "$answer")" ]]; then
  printf '\n'
fi

[[ "$status" =~ ^2[0-9][0-9]$ ]] || exit 1
