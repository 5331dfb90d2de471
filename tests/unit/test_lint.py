"""The Ansible content passes yamllint and ansible-lint's production profile."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def run(*cmd):
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), NO_COLOR="1")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_yamllint_clean():
    res = run(os.path.join(BIN, "yamllint"), "--strict", "roles", "playbooks", "inventory",
              ".ansible-lint", ".yamllint")
    assert res.returncode == 0, res.stdout + res.stderr


def test_ansible_lint_production_profile():
    res = run(os.path.join(BIN, "ansible-lint"), "--offline")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in res.stdout + res.stderr
