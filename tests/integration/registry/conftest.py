"""Fixtures for the registry tests: real ``docker-registry`` processes (see tests/registry_fixtures.py),
killed at teardown whatever the outcome."""

from __future__ import annotations

import shutil

import pytest

from registry_fixtures import PASSWORD, USER, Registry, TokenServer, make_pki

pytestmark = pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def open_registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("open-registry"), "open")
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("basic-registry"), "basic")
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_server(pki):
    server = TokenServer(pki, {USER: PASSWORD})
    yield server
    server.close()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory, pki, token_server):
    reg = Registry(tmp_path_factory.mktemp("token-registry"), "token", pki=pki, token=token_server)
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture
def own_registry(tmp_path):
    """A registry of the test's own, which it may kill, restart or tamper with."""
    (tmp_path / "own-registry").mkdir()
    reg = Registry(tmp_path / "own-registry", "open")
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture
def docker_config(tmp_path, hutch):
    """A private Docker client config directory for the test's hutch commands."""
    folder = tmp_path / "docker-config"
    hutch.env["DOCKER_CONFIG"] = str(folder)
    return folder


@pytest.fixture
def second(tmp_path, hutch):
    """A second, empty hutch root (same environment) to pull into."""
    other = type(hutch)(tmp_path / "root2")
    other.env = hutch.env
    return other
