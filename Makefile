# Flotilla — common tasks. Everything runs from a virtualenv in .venv.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLUSTER_DIR := $(CURDIR)/.cache/cluster
FLOTILLA := $(VENV)/bin/flotilla --host 127.0.0.1:4242,127.0.0.1:4243,127.0.0.1:4244 --tls-dir $(CLUSTER_DIR)/manager-1/admin
PLAYBOOK := $(VENV)/bin/ansible-playbook

.PHONY: venv docker test test-unit test-integration test-deploy chaos vagrant-test test-slow wheelhouse bench bench-deps bench-scale cluster cluster-down clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

## Static checks over daemons/: ruff (pyflakes, pycodestyle, bugbear) and mypy, both
## configured in pyproject.toml.
.PHONY: lint
lint: venv
	$(VENV)/bin/ruff check daemons
	$(VENV)/bin/mypy

## A running Docker engine and the test images (installs docker.io if missing).
docker:
	./tests/images/setup-docker.sh

## Everything CI runs: unit, integration on real processes and Docker, deployment
## with Ansible on five test hosts, make cluster, and a short seeded chaos run (8
## faults). The tests mostly wait on processes, so they run in $(TEST_WORKERS)
## pytest-xdist workers: one module per worker at a time (its clusters are built
## once), the test-hosts group in a worker of its own, the longest groups first
## (tests/conftest.py). TEST_WORKERS=0 runs them in this process. On an otherwise
## idle 2-core machine: 24 minutes in 3 workers (35 in one process); the Ansible
## runs (test hosts and make cluster) take most of the CPU and the longest time.
TEST_WORKERS ?= 3
XDIST := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS))

test: venv lint docker
	$(PY) -m pytest tests/unit tests/integration tests/deploy tests/chaos -q -m "not slow" --durations=10 $(XDIST)

test-unit: venv
	$(PY) -m pytest tests/unit -q

test-integration: venv docker
	$(PY) -m pytest tests/integration -q -m "not slow" $(XDIST)

## Ansible on test hosts (containers with systemd, sshd and dockerd) and make cluster.
test-deploy: venv docker
	$(PY) -m pytest tests/deploy -q

## The chaos suite: 3 managers and 3 agents, each in its own network namespace
## with its own Docker engine, under 100 seeded faults (about 30 minutes).
## FLOTILLA_CHAOS_SEED and FLOTILLA_CHAOS_FAULTS change the run.
chaos: venv docker
	$(PY) -m pytest tests/chaos -m slow -q -s

## vagrant up --provider=docker, a service deployment, vagrant destroy.
vagrant-test: venv docker
	./tests/deploy/vagrant_test.sh

## Wheels of flotilla and its dependencies for hosts without a package index.
wheelhouse: venv
	rm -rf .cache/wheelhouse .cache/wheelhouse.tar
	$(PY) -m pip wheel --quiet --wheel-dir .cache/wheelhouse --constraint requirements.txt .

## Long-running suites kept out of the default run, and the Vagrant cluster.
test-slow: venv docker
	$(PY) -m pytest tests -q -m slow
	./tests/deploy/vagrant_test.sh

## Benchmarks: print tables and write JSON under bench/results/.
bench: venv docker bench-deps
	$(PY) bench/raft_writes.py --etcd-check-perf
	$(PY) bench/journal_cut.py
	$(PY) bench/snapshot_write.py
	$(PY) bench/failover.py
	$(PY) bench/raft_flood.py
	$(PY) bench/converge.py
	$(PY) bench/converge.py --init
	$(PY) bench/slow_uploads.py
	$(PY) bench/network.py

## What the benchmarks need besides the virtualenv: etcd, run side by side with the
## replicated store in bench/raft_writes.py (Debian's etcd-server and etcd-client).
bench-deps:
	@if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null; \
	fi

## 3 managers + 1,000 simulated agents (real joins, sessions and mTLS listeners),
## services totalling 30,000 tasks arriving at 2,000 tasks/s (5 runs, medians), then
## created all at once (3 runs; a py-spy profile of the first run's leader goes to
## bench/results/scale-leader.svg). Not part of `make bench` (about 10 minutes).
bench-scale: venv
	$(PY) bench/scale.py --rate 2000 --runs 5
	$(PY) bench/scale.py --runs 3 --profile bench/results/scale-leader.svg

## A local cluster (3 managers + 2 workers on 127.0.0.1:4242-4246) with demo services
## (a web page, a client fetching it by name over an overlay network, workers),
## deployed by Ansible with inventory/local (supervisord keeps the nodes running).
cluster: venv docker
	$(PLAYBOOK) -i inventory/local playbooks/site.yml
	$(PLAYBOOK) -i inventory/local playbooks/demo.yml
	@echo
	@$(FLOTILLA) node ls
	@echo
	@$(FLOTILLA) service ls
	@echo
	@echo "The demo web service answers on http://127.0.0.1:8080/  (try: curl http://127.0.0.1:8080/)"
	@echo "and demo-client fetches http://demo-web/ by name over the overlay network demo:"
	@$(FLOTILLA) service logs --tail 1 demo-client
	@echo "Use the CLI against it:"
	@echo "  export FLOTILLA_HOST=127.0.0.1:4242,127.0.0.1:4243,127.0.0.1:4244"
	@echo "  export FLOTILLA_TLS_DIR=$(CLUSTER_DIR)/manager-1/admin"
	@echo "  $(VENV)/bin/flotilla node ls"
	@echo "  $(VENV)/bin/flotilla service logs -f demo-client"
	@echo "  $(VENV)/bin/flotilla network inspect --verbose demo"
	@echo "  $(VENV)/bin/flotilla service ps demo-workers"
	@echo "  $(VENV)/bin/flotilla service scale demo-workers=8"
	@echo "Remove it with: make cluster-down"

cluster-down:
	@if [ -x $(PLAYBOOK) ] && [ -d $(CLUSTER_DIR) ]; then $(PLAYBOOK) -i inventory/local playbooks/teardown.yml; fi
	rm -rf $(CLUSTER_DIR)

clean: cluster-down
	rm -rf $(VENV) .pytest_cache
