#!/usr/bin/env bash
# End-to-end check of the Vagrantfile with the docker provider: bring the
# machines up (containers that boot systemd, from the local node image; nothing
# is downloaded), let the Ansible provisioner deploy the cluster, run a service
# across the workers, check that it converges, destroy everything.
#
#   tests/deploy/vagrant_test.sh          # NUM_MANAGERS / NUM_WORKERS as in the Vagrantfile
#   KEEP=1 tests/deploy/vagrant_test.sh   # leave the machines running afterwards
#
# Needs root (installs vagrant from Debian when missing, builds the node image
# when missing). Exits non-zero on any failure. About 3-4 minutes warm.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
START=$(date +%s)
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
export VAGRANT_DEFAULT_PROVIDER=docker
export PATH="$ROOT/.venv/bin:$PATH"
NUM_MANAGERS=${NUM_MANAGERS:-3}
NUM_WORKERS=${NUM_WORKERS:-2}
SUBNET=${SUBNET:-192.168.56}
export NUM_MANAGERS NUM_WORKERS SUBNET
SERVICE=vagrant-check
REPLICAS=$((2 * NUM_WORKERS))
FLOTILLA="/opt/flotilla/venv/bin/flotilla --host $SUBNET.11:4242 --tls-dir /var/lib/flotilla/admin"

step() { printf '\n==> [%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

[ "$NUM_WORKERS" -ge 1 ] || fail "NUM_WORKERS must be at least 1 for this check"
[ -x .venv/bin/ansible-playbook ] || fail "no .venv/bin/ansible-playbook (make venv)"

if ! command -v vagrant >/dev/null; then
    step "installing vagrant (Debian package)"
    [ "$(id -u)" = 0 ] || fail "vagrant is missing and installing it needs root"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq vagrant >/dev/null
fi
vagrant --version

step "node image, SSH key, busybox archive and wheelhouse"
eval "$(.venv/bin/python tests/deploy/testhosts.py prepare --shell)"
export FLOTILLA_WHEELHOUSE="$WHEELHOUSE"

cleanup() {
    rc=$?
    if [ "${KEEP:-0}" = 1 ]; then
        echo "KEEP=1: machines left running; remove them with: vagrant destroy -f"
    else
        step "vagrant destroy -f"
        vagrant destroy -f >/dev/null 2>&1 || vagrant destroy -f || true
        left=$(docker ps -aq --filter name='^flt-(manager|worker)-[0-9]+$')
        [ -z "$left" ] || { echo "containers left behind: $left" >&2; rc=1; }
    fi
    echo
    if [ "$rc" = 0 ]; then echo "vagrant test PASSED in $(($(date +%s) - START))s"
    else echo "vagrant test FAILED (exit $rc) after $(($(date +%s) - START))s" >&2; fi
    exit "$rc"
}
trap cleanup EXIT

if [ -n "$(vagrant status --machine-readable 2>/dev/null | awk -F, '$3=="state" && $4!="not_created"')" ]; then
    step "removing machines left from an earlier run"
    vagrant destroy -f
fi

step "vagrant up --provider=docker --no-parallel ($NUM_MANAGERS managers, $NUM_WORKERS workers)"
vagrant up --provider=docker --no-parallel

step "creating service $SERVICE ($REPLICAS replicas on the workers) over vagrant ssh"
vagrant ssh flt-manager-1 -c "$FLOTILLA service create --name $SERVICE --replicas $REPLICAS \
    --constraint node.role==worker flotilla-test/busybox:1 httpd -f -p 80 -h /www"

step "waiting until every replica runs"
deadline=$(($(date +%s) + 180))
until docker exec flt-manager-1 $FLOTILLA service ls --format json | python3 -c "
import json, sys
s = [x for x in json.load(sys.stdin) if x['name'] == '$SERVICE']
sys.exit(0 if s and s[0]['replicas']['running'] == s[0]['replicas']['desired'] == $REPLICAS else 1)"; do
    [ "$(date +%s)" -lt "$deadline" ] || {
        docker exec flt-manager-1 $FLOTILLA service ps $SERVICE || true
        fail "service $SERVICE did not converge within 180s"
    }
    sleep 1
done
docker exec flt-manager-1 $FLOTILLA service ps $SERVICE

step "checking the containers on each worker's own engine"
total=0
for i in $(seq 1 "$NUM_WORKERS"); do
    n=$(docker exec "flt-worker-$i" docker ps -q --filter ancestor=flotilla-test/busybox:1 | wc -l)
    echo "flt-worker-$i runs $n container(s)"
    [ "$n" -ge 1 ] || fail "flt-worker-$i runs none of the replicas"
    total=$((total + n))
done
[ "$total" -eq "$REPLICAS" ] || fail "$total containers on the workers, expected $REPLICAS"
for i in $(seq 1 "$NUM_MANAGERS"); do
    n=$(docker exec "flt-manager-$i" docker ps -q --filter ancestor=flotilla-test/busybox:1 | wc -l)
    [ "$n" -eq 0 ] || fail "flt-manager-$i runs $n replica(s) despite the constraint"
done
docker exec flt-worker-1 sh -c 'id=$(docker ps -q --filter ancestor=flotilla-test/busybox:1 | head -1);
    docker exec "$id" wget -q -O - http://127.0.0.1/' | grep -q "flotilla test image" \
    || fail "a replica does not serve its page"
echo "the replicas answer on their port"
