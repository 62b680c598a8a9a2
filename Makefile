# Two commands on a fresh machine:  `make demo`  (a demo queue in local mode)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test lint bench system-deps clean

# The virtual environment is rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/aris-queue demo

# What the tests need from the system: an OpenSSH server (the SSH tests start their own on 127.0.0.1),
# its client (ProxyCommand tests), and screen + tmux (the attachable launchers). Installed when missing.
system-deps:
	@for t in ssh screen tmux; do command -v $$t >/dev/null || missing=1; done; \
	[ -x /usr/sbin/sshd ] && [ -z "$$missing" ] || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    openssh-server openssh-client screen tmux >/dev/null; }

lint: install
	$(BIN)/ruff check .

test: install system-deps lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache experiment_queue .demo
