#!/usr/bin/env bash
# Builds the previous release's binary from its git tag, for the upgrade fault tests
# (tests/faults/upgrade.rs), and prints its path on stdout.
#
# The source comes from `git archive <tag>` and builds into its own target directory under a
# cache (JB_PREVIOUS_CACHE, default ~/.cache/jelou-bridge/previous), so this machine pays the
# debug build once per tag; a fresh CI machine pays it once per run. The tag is the newest
# `v*` tag reachable from HEAD whose version is not the one in Cargo.toml (so it still names
# the release before this one once this one is tagged); PREVIOUS_TAG overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[build-previous] %s\n' "$*" >&2; }

current="v$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
tag="${PREVIOUS_TAG:-}"
if [ -z "$tag" ]; then
  for t in $(git tag --list 'v*' --sort=-v:refname --merged HEAD); do
    if [ "$t" != "$current" ]; then tag="$t"; break; fi
  done
fi
# A clone made without its tags (some CI checkouts) still has every release's commit: the
# releases are listed here too, newest first, as tag=commit.
known_releases="v0.2.0=6ce1789f7d18a4202ddca272feed845ccf8e1051 v0.1.0=6c065d8b838ea6ecea2361fc8783b8b3f097e15a"
if [ -z "$tag" ]; then
  for release in $known_releases; do
    if [ "${release%%=*}" != "$current" ] && git cat-file -e "${release#*=}^{commit}" 2>/dev/null; then
      tag="${release%%=*}"
      say "no tag $tag in this clone: using its commit"
      git tag "$tag" "${release#*=}" 2>/dev/null || true
      break
    fi
  done
fi
if [ -z "$tag" ]; then
  say "FAILED: no release tag (v*) before $current is reachable from HEAD; fetch the tags (git fetch --tags)"
  exit 1
fi

commit="$(git rev-parse "$tag^{commit}")"
cache="${JB_PREVIOUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jelou-bridge/previous}/$tag"
bin="$cache/target/debug/jelou-bridge"

# The stamp names the commit the binary was built from: a moved tag builds again.
if [ -x "$bin" ] && [ "$(cat "$cache/built-from" 2>/dev/null)" = "$commit" ]; then
  say "$tag ($commit) already built: $bin"
  echo "$bin"
  exit 0
fi

say "building $tag ($commit) into $cache (a debug build; a few minutes the first time)"
rm -rf "$cache/src"
mkdir -p "$cache/src"
# -m: the files get the time of extraction, so cargo rebuilds them rather than trusting an
# artefact of the same name that a seeded or older target directory holds.
git archive "$commit" | tar -x -m -C "$cache/src"
(cd "$cache/src" && CARGO_TARGET_DIR="$cache/target" cargo build --locked --quiet --bin jelou-bridge)
echo "$commit" > "$cache/built-from"
say "built $bin"
echo "$bin"
