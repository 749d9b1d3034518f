#!/usr/bin/env bash
# Mints an RS256 token for the quick start's "orders" route, signed with the example key
# (keys/example-private.pem): an example key, published in this repository, never trusted
# anywhere else.
#
#   ./examples/quickstart/mint-token.sh [SUBJECT] [ROLE,...] [SECONDS]
#   curl -H "Authorization: Bearer $(./examples/quickstart/mint-token.sh alice admin)" \
#        -H 'Host: orders.example.local' localhost:8080/orders/admin
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sub="${1:-alice}"
roles="${2:-}"
ttl="${3:-3600}"
command -v openssl >/dev/null || { echo "mint-token.sh: openssl is needed" >&2; exit 1; }

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now="$(date +%s)"
roles_json="$(printf '%s' "$roles" | awk -F, '{for (i = 1; i <= NF; i++) printf "%s\"%s\"", (i > 1 ? "," : ""), $i}')"
header='{"alg":"RS256","typ":"JWT"}'
payload="$(printf '{"iss":"https://auth.example.local","aud":"orders","sub":"%s","roles":[%s],"iat":%s,"exp":%s}' \
  "$sub" "$roles_json" "$now" "$((now + ttl))")"
signing_input="$(printf '%s' "$header" | b64url).$(printf '%s' "$payload" | b64url)"
signature="$(printf '%s' "$signing_input" | openssl dgst -sha256 -sign "$here/keys/example-private.pem" -binary | b64url)"
printf '%s.%s\n' "$signing_input" "$signature"
