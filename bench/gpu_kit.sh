#!/usr/bin/env bash
# Here, on the development machine: fetch the wheels the lent GPU machine lacks into .whl/.
#
# Why a kit: the GPU machine has torch, transformers, accelerate, huggingface_hub, safetensors
# and pytest (Python 3.12, no network), but not diffusers, nor what the test fixtures import
# (SQLAlchemy, Alembic, Mako), nor torchao for the FP8 lever. Its device time is 15 minutes a
# session, so everything is fetched beforehand and the check runs as one command:
#
#     bash bench/gpu_kit.sh                     # here: ~12 MB of wheels into .whl/ (git-ignored)
#     # then the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=590)
#
# Versions are the ones this project is tested with here (torchao 0.18 is the release built for
# torch 2.11, the GPU machine's torch); PYVER picks the wheels' Python (default 3.12, the GPU
# machine's). No dependencies are resolved (--no-deps): each package it lacks is named below.
set -euo pipefail
cd "$(dirname "$0")/.."

grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >>.git/info/exclude; }
rm -rf .whl && mkdir -p .whl

PY="${PYTHON:-.venv/bin/python}"
WHEELS=(
    diffusers==0.42.1
    importlib_metadata==10.2.0
    lazy-importer
    sqlalchemy==2.1.9
    alembic==1.20.1
    mako==1.4.3
    torchao==0.18.0
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
ls -1 .whl
du -sh .whl
