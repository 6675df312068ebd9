#!/bin/sh
# code-server, a real VS Code served to a browser, for tests/editors/test_vscode.py: installed once
# into DIR (make code-server). Its own postinstall downloads ripgrep from GitHub, and only the npm
# registry can be reached here and in CI, so its steps are taken here without that download:
# VS Code's server dependencies from npm (pinned by its shrinkwrap), then only the native modules
# the server loads, built from source. Left out: search in files and Quick Open's file search
# (ripgrep) and the built-in extensions' TypeScript; the editor, extensions and terminal work.
set -eu

# The last code-server for Node 20 (VS Code 1.99); later releases require Node 22 or 24.
VERSION=4.99.3
DIR=${1:?usage: install-code-server.sh DIR}

major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" = 20 ] || echo "warning: code-server $VERSION is built for Node 20, this is Node $major" >&2

rm -rf "$DIR"
mkdir -p "$DIR"
npm install --prefix "$DIR" --no-audit --no-fund --ignore-scripts --loglevel=error "code-server@$VERSION"
# Password hashing for --auth password: a native module of code-server itself.
(cd "$DIR" && npm rebuild --loglevel=error argon2)

cd "$DIR/node_modules/code-server/lib/vscode"
npm install --omit=dev --no-audit --no-fund --ignore-scripts --loglevel=error
# node-pty's install runs `npx node-gyp`: yes to fetching it from the registry.
npm_config_yes=true npm rebuild --loglevel=error @vscode/spdlog node-pty native-watchdog @parcel/watcher @vscode/deviceid
# VS Code looks for its modules in node_modules.asar (code-server's postinstall links it too).
ln -sfn node_modules node_modules.asar
cd - >/dev/null
touch "$DIR/.installed"
