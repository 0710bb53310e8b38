# idhub — the two commands of the Quick start: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 5000

.PHONY: run test install install-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@# the filter hides setuptools's notice about editable installs, which is information, not a problem
	PYTHONWARNINGS="ignore:Editable installation.:UserWarning" $(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	PYTHONWARNINGS="ignore:Editable installation.:UserWarning" $(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The demo: SQLite under instance/, mail to instance/outbox, no other service.
run: export IDHUB_COOKIE_SECURE ?= false
run: export IDHUB_BASE_URL ?= http://$(HOST):$(PORT)
run: install
	@mkdir -p instance
	$(BIN)/idhub db upgrade
	$(BIN)/idhub apply config/demo.yaml
	@echo ""
	@echo "  idhub demo:  $(IDHUB_BASE_URL)/w/demo/login"
	@echo "  sign in as   alice@demo.test  /  S3cure-Example!"
	@echo "  (admin:      admin@demo.test  /  Adm1n-Example!  sets up 2FA first, then /w/demo/admin/)"
	@echo "  mail and texts go to instance/outbox/"
	@echo ""
	$(BIN)/idhub serve --host $(HOST) --port $(PORT) --workers 2

lint: install-test
	$(BIN)/ruff check .

# The whole suite: unit, contract (SQLite, PostgreSQL, Redis), integration and browser tests.
# Needs PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379 and Debian's chromium (see .ci/run).
test: install-test
	$(BIN)/ruff check .
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Sign-in vs argon2id (bench/signin.py), policy/TOTP vs one hash (bench/policy_totp.py) and SCIM at 100,000 users
# vs scim2-server (bench/scim.py); see bench/README.md. Needs PostgreSQL on 127.0.0.1:5432 for the TOTP and SCIM
# rows; BENCH_ARGS are passed to bench/signin.py, SCIM_BENCH_ARGS to bench/scim.py, SAML_BENCH_ARGS to
# bench/saml_sso.py (signed SAML Responses vs pysaml2's IdP), OIDC_BENCH_ARGS to bench/oidc_tokens.py (token
# endpoint grants/s vs node oidc-provider; needs node + npm and PostgreSQL); bench/federation.py and
# bench/federation_saml.py: upstream OIDC callbacks and SAML responses vs authlib's and python3-saml's raw cost;
# FLEET_BENCH_ARGS to bench/fleet.py (one node vs two on PostgreSQL + Redis, with pg_locks lock waits).
# bench/audit.py (AUDIT_BENCH_ARGS): audit events/s of one workspace from 32 writers, before/after (PostgreSQL).
bench: install-test
	$(BIN)/python bench/signin.py $(BENCH_ARGS)
	$(BIN)/python bench/policy_totp.py
	$(BIN)/python bench/scim.py $(SCIM_BENCH_ARGS)
	$(BIN)/python bench/saml_sso.py $(SAML_BENCH_ARGS)
	$(BIN)/python bench/oidc_tokens.py --floor $(OIDC_BENCH_ARGS)
	$(BIN)/python bench/fleet.py $(FLEET_BENCH_ARGS)
	$(BIN)/python bench/audit.py $(AUDIT_BENCH_ARGS)
	$(BIN)/python bench/federation.py
	$(BIN)/python bench/federation_saml.py

clean:
	rm -rf $(VENV) instance .pytest_cache
