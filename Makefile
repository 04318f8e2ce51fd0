# `make test` is exactly what CI runs (.ci/run); `make demo` installs the
# same way and starts the self-contained demo (https://localhost:8443/ with
# an ad-hoc certificate, http://localhost:8080/).
#
# VENV (default .venv) is where lbproxy is installed -- for real, not
# editable, so that twistd finds the plugin.

VENV ?= .venv
export VENV

.PHONY: test demo

test:
	bash .ci/run

demo:
	bash .ci/run setup
	$(VENV)/bin/twistd -n --pidfile= lbproxy --demo
