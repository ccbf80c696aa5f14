# shadowlun: the two commands of the README, and a few for developers.
#   make test   set up this Debian 12 machine, run the unit tests and the lab system tests
#   make demo   set up, boot the lab, run the main scenario with readable progress
#   make bench  set up, boot the lab, print the benchmark figures (and bench.json)
#   make vagrant-demo  set up, `vagrant up` the same machines (local box, libvirt), tell the story
VENV ?= .venv
PY := $(VENV)/bin/python
LAB := PYTHONPATH=vagrant $(PY) -m lab

.PHONY: setup test unit system demo vagrant-demo bench lab-up lab-status lab-down

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml vagrant/host-setup.sh
	sh vagrant/host-setup.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest --durations=25 tests/unit tests/system

unit: setup
	$(PY) -m pytest tests/unit

system: setup
	$(PY) -m pytest tests/system

demo: setup
	$(LAB) demo

vagrant-demo: setup
	$(LAB) vagrant-demo

bench: setup
	$(LAB) bench --json bench.json

# Keep a lab running between test runs (tests attach to it instead of booting their own).
lab-up: setup
	$(LAB) up

lab-status: setup
	$(LAB) status

lab-down: setup
	$(LAB) down
