#!/bin/sh
# Builds app.py into hello.wasm, a wasi:http component, with componentize-py from PyPI
# (pinned in requirements.txt), installed into a virtual environment here.
set -eu
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt
fi
# ../wit: WASI 0.2.10's wasi:http/proxy, plus wasi:cli/environment for os.environ.
.venv/bin/componentize-py -d ../wit -w hello componentize -p . app -o hello.wasm
