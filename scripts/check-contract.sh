#!/usr/bin/env bash
# Checks the machine-readable bus contract: docs/asyncapi.yaml is a valid AsyncAPI document whose
# $refs resolve (the schemas/ files included), and every schema in schemas/ is described in it.
# (That schemas/ matches the code is a unit test: src/contract/schema.rs.)
#
# The validator is @asyncapi/parser, the library @asyncapi/cli's `validate` runs, pinned and
# installed from the npm registry into ~/.cache/jelou-bridge/ when missing. Not the CLI itself:
# @asyncapi/cli 5 and 6 need node 24, and 4.1.1 took 3 min 51 s and 1.5 GB to install here
# (1487 packages) against 15 s and 54 MB for the parser.
# Never skips: without node and npm, or with an invalid document, it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PARSER_VERSION=3.6.6
cache="${JB_CACHE_DIR:-$HOME/.cache/jelou-bridge}/asyncapi-parser-$PARSER_VERSION"
fail() { echo "FAILED: check-contract: $*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || fail "node is not installed (Node.js 18 or later is needed to validate docs/asyncapi.yaml)"
command -v npm >/dev/null 2>&1 || fail "npm is not installed (needed to install @asyncapi/parser@$PARSER_VERSION)"

if [ ! -f "$cache/node_modules/@asyncapi/parser/package.json" ]; then
  echo "check-contract: installing @asyncapi/parser@$PARSER_VERSION into $cache" >&2
  mkdir -p "$cache"
  timeout 600 npm install --prefix "$cache" --no-audit --no-fund --loglevel=error \
    "@asyncapi/parser@$PARSER_VERSION" >&2 || fail "npm install @asyncapi/parser@$PARSER_VERSION"
fi

for schema in schemas/*.schema.json; do
  [ -e "$schema" ] || fail "no schemas in schemas/ (cargo run -- schemas --out schemas)"
  grep -qF "'../$schema'" docs/asyncapi.yaml || fail "$schema is not described in docs/asyncapi.yaml"
done

NODE_PATH="$cache/node_modules" timeout 120 node scripts/contract/validate-asyncapi.cjs docs/asyncapi.yaml \
  || fail "docs/asyncapi.yaml (see the errors above)"
