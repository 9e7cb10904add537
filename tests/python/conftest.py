import pytest

from harness import API_KEY, Server


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def api_url(server):
    return f"{server.url}/api"


@pytest.fixture
def api_key():
    return API_KEY
